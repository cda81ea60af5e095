"""The optional compiled kernel of the streaming step (``sepcli/csrc/stream_blocks.c``).

Real-time chunks are a few frames, so each of a Conv-TasNet's 1x1 convs is a
product of a few rows with a large weight matrix. BLAS spends most of such a
call on overheads; the C kernel streams each packed weight panel once and
keeps a tile of rows x columns in registers, and runs the blocks' element-wise
work (PReLU, cumulative norms, the dilated depthwise conv) in the same pass.
docs/streaming-kernel.md has what it gains.

The source ships with the package and is compiled on first use with the
machine's C compiler (``$CC``, else ``cc``, ``gcc`` or ``clang``), with
``-O3 -march=native``, into a per-user cache (``$SEP_CACHE_DIR`` or
``~/.cache/sep``), keyed by the source, the compiler and the CPU, so a shared
home directory never hands one CPU another's build. Nothing is downloaded.
Without a compiler, or with ``SEP_NATIVE=0``, :func:`load` returns None and
the streamer uses its torch path, which computes the same thing.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch

SOURCE = Path(__file__).resolve().parent / "csrc" / "stream_blocks.c"
FLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-fno-math-errno"]
HALF_PANELS = True
"""Use float16 weight panels when every weight is exactly a float16 value and
a step is one register tile of rows (False: always float32, e.g. to measure
what the float16 panels gain)."""
EXTRA_FLAGS_ENV = "SEP_NATIVE_CFLAGS"  # appended to FLAGS, e.g. "-mno-avx512f" to build the AVX2 kernel

_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL | None] = {}  # by extra flags
_why: dict[str, str] = {}  # by extra flags: why the build failed


class SepBlock(ctypes.Structure):
    """Mirror of ``SepBlock`` in stream_blocks.c (one ConvBlock and its state)."""

    _fields_ = [
        ("B", ctypes.c_int32), ("H", ctypes.c_int32), ("P", ctypes.c_int32), ("n_out", ctypes.c_int32),
        ("n_slope1", ctypes.c_int32), ("n_slope2", ctypes.c_int32),
        ("pad", ctypes.c_int32), ("cap", ctypes.c_int32),
        ("pos", ctypes.c_int64),
        ("eps1", ctypes.c_float), ("eps2", ctypes.c_float),
        *[(n, ctypes.c_void_p) for n in ("w_in", "b_in", "slope1", "slope2", "taps", "offsets", "b_d", "tap_bias",
                                         "w_out", "gain2", "cache", "sums")],
    ]


class SepNet(ctypes.Structure):
    """Mirror of ``SepNet`` in stream_blocks.c (the network around the blocks)."""

    _fields_ = [
        *[(n, ctypes.c_int32) for n in ("N", "L", "hop", "q", "S", "B", "Sc", "n_out", "H", "n_blocks",
                                         "n_slope_out", "half")],
        ("eps0", ctypes.c_float),
        *[(n, ctypes.c_void_p) for n in ("w_enc", "w_acc", "gain0", "b_acc", "slope_out", "w_mask", "b_mask",
                                         "w_dec")],
        ("w_dec_stride", ctypes.c_int64),
        ("blocks", ctypes.POINTER(SepBlock)),
        ("sums0", ctypes.c_void_p), ("tail", ctypes.c_void_p),
        ("decay", ctypes.c_double),
    ]


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _cpu_key() -> str:
    """What -march=native depends on: the CPU's feature flags where Linux shows them."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() + platform.machine()


def cache_dir() -> Path:
    return Path(os.environ.get("SEP_CACHE_DIR") or Path.home() / ".cache" / "sep") / "native"


def _flags() -> list[str]:
    return FLAGS + shlex.split(os.environ.get(EXTRA_FLAGS_ENV, ""))


def _build(cc: str) -> Path:
    """Compile the kernel (once per source, compiler, flags and CPU) and return the library's path."""
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    flags = _flags()
    key = hashlib.sha256("\0".join([SOURCE.read_text(), cc, version, " ".join(flags), _cpu_key(),
                                    sys.platform]).encode()).hexdigest()[:16]
    suffix = ".dll" if sys.platform == "win32" else ".so"
    lib = cache_dir() / f"stream_blocks-{key}{suffix}"
    if lib.exists():
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=suffix, dir=lib.parent)
    os.close(fd)
    try:
        done = subprocess.run([cc, *flags, str(SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True,
                              timeout=300)
        if done.returncode != 0 and "-march=native" in flags:  # a compiler that does not know this CPU
            portable = [f for f in flags if f != "-march=native"]
            done = subprocess.run([cc, *portable, str(SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True,
                                  timeout=300)
        if done.returncode != 0:
            lines = (done.stderr or done.stdout or f"exit status {done.returncode}").strip().splitlines()
            raise OSError(f"{cc} failed: {lines[-1] if lines else done.returncode}")
        os.replace(tmp, lib)  # atomic: another process never loads a half-written library
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return lib


def _disabled() -> bool:
    return os.environ.get("SEP_NATIVE", "1").strip().lower() in ("0", "false", "no", "off")


def load() -> ctypes.CDLL | None:
    """The compiled kernel, building it on first use; None when it cannot be had
    (``SEP_NATIVE=0``, no C compiler, or the build failed: see :func:`why_not`)."""
    if _disabled():
        return None
    with _lock:
        key = os.environ.get(EXTRA_FLAGS_ENV, "")  # one library per set of extra flags
        if key in _loaded:
            return _loaded[key]
        lib = None
        cc = _compiler()
        if cc is None:
            _why[key] = "no C compiler found (set CC)"
        else:
            try:
                lib = ctypes.CDLL(str(_build(cc)))
                lib.sep_gemm.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_int,
                                         ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int,
                                         ctypes.c_void_p, ctypes.c_int]
                lib.sep_gemm.restype = None
                lib.sep_panel_width.restype = ctypes.c_int
                lib.sep_has_half.restype = ctypes.c_int
                lib.sep_tile_rows.restype = ctypes.c_int
                lib.sep_scratch_floats.argtypes = [ctypes.POINTER(SepNet), ctypes.c_int, ctypes.c_int]
                lib.sep_scratch_floats.restype = ctypes.c_int64
                lib.sep_network.argtypes = [ctypes.POINTER(SepNet), ctypes.POINTER(ctypes.c_void_p), ctypes.c_int,
                                            ctypes.c_int, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
                lib.sep_network.restype = None
            except (OSError, subprocess.SubprocessError) as err:
                lib = None
                _why[key] = f"could not build the kernel: {err}"
        _loaded[key] = lib
        return lib


def why_not() -> str:
    """Why :func:`load` returned None (empty if it did not)."""
    if _disabled():
        return "disabled by SEP_NATIVE=0"
    return _why.get(os.environ.get(EXTRA_FLAGS_ENV, ""), "")


def available() -> bool:
    return load() is not None


def pack_panels(w: torch.Tensor, width: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A weight ``[in, out]`` as the kernel reads it: panels of ``width`` output
    columns, each ``[in, width]`` and contiguous, the last one zero-padded;
    float32, or float16 (see :func:`exactly_half`).
    Shape: [Kd, N] -> [ceil(N / width), Kd, width] (contiguous)."""
    kd, n = w.shape
    panels = -(-n // width)
    padded = w.new_zeros(kd, panels * width, dtype=dtype)
    padded[:, :n] = w
    return padded.view(kd, panels, width).transpose(0, 1).contiguous()  # [panels, Kd, width]


def exactly_half(*weights: torch.Tensor) -> bool:
    """Whether every value is exactly a float16 value (as in models stored in
    float16, like the shipped ones): then float16 panels give the very same
    products, with half the bytes to read."""
    return all(torch.equal(w.to(torch.float16).to(w.dtype), w) for w in weights)


def gemm(x: torch.Tensor, w_packed: torch.Tensor, n_out: int, bias: torch.Tensor | None = None,
         out: torch.Tensor | None = None, accumulate: bool = False) -> torch.Tensor:
    """``out (=|+=) bias + x @ W`` with the kernel (for tests and benchmarks).
    Shape: x [M, Kd] float32, w_packed from :func:`pack_panels` (float32 or float16) -> [M, n_out]."""
    lib = load()
    if lib is None:
        raise RuntimeError(f"native kernel unavailable: {why_not()}")
    x = x.contiguous()
    m, kd = x.shape
    if out is None:
        out = x.new_zeros(m, n_out)
    half = w_packed.dtype == torch.float16
    lib.sep_gemm(m, n_out, kd, x.data_ptr(), kd, w_packed.data_ptr(), int(half), out.data_ptr(), out.stride(0),
                 bias.data_ptr() if bias is not None else None, int(accumulate))
    return out

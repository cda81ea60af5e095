"""The compiled streaming kernel (sepcli.native): its matrix product against
torch in float64, its build and fallbacks. That the streamer's native step
equals the offline forward is tested in test_streaming.py (every test there
runs with both backends)."""
from __future__ import annotations

import json
import platform

import pytest
import torch
from click.testing import CliRunner

from sepcli import native, registry
from sepcli.cli import main
from sepcli.errors import SepError
from sepcli.streaming import Streamer, stream_array

needs_kernel = pytest.mark.skipif(not native.available(), reason=f"native kernel unavailable: {native.why_not()}")


@pytest.fixture
def fresh_loader(monkeypatch: pytest.MonkeyPatch, tmp_path):
    """No library loaded yet in this process, and an empty build cache."""
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setattr(native, "_why", {})
    monkeypatch.setenv("SEP_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_pack_panels_layout():
    w = torch.arange(3 * 5, dtype=torch.float32).view(3, 5)  # [Kd, N]
    p = native.pack_panels(w, 4)
    assert p.shape == (2, 3, 4) and p.is_contiguous()
    assert torch.equal(p[0], w[:, :4])
    assert torch.equal(p[1, :, 0], w[:, 4]) and not p[1, :, 1:].any()  # zero padding


@needs_kernel
@pytest.mark.parametrize("M", [1, 2, 5, 6, 7, 8, 9, 13, 17])
@pytest.mark.parametrize("N,Kd", [(1, 3), (16, 8), (31, 7), (32, 16), (33, 20), (70, 9), (512, 128)])
def test_gemm_matches_float64(M: int, N: int, Kd: int):
    gen = torch.Generator().manual_seed(M * 1000 + N + Kd)
    x = torch.randn(M, Kd, generator=gen)
    w = torch.randn(Kd, N, generator=gen)
    bias = torch.randn(N, generator=gen)
    width = native.load().sep_panel_width()
    packed = native.pack_panels(w, width)
    ref = x.double() @ w.double()
    tol = 1e-5 * (Kd ** 0.5) * float(ref.abs().max() + 1)
    assert float((native.gemm(x, packed, N).double() - ref).abs().max()) < tol
    out = torch.randn(M, N, generator=gen)
    want = out.double() + bias.double() + ref
    native.gemm(x, packed, N, bias=bias, out=out, accumulate=True)
    assert float((out.double() - want).abs().max()) < tol


@needs_kernel
@pytest.mark.parametrize("M", [1, 8, 11])
@pytest.mark.parametrize("N,Kd", [(5, 3), (32, 16), (70, 33), (256, 512)])
def test_gemm_with_float16_panels(M: int, N: int, Kd: int):
    """Float16 panels of weights that are float16 values give the float32 products."""
    if not native.load().sep_has_half():
        pytest.skip("this build has no float16 loads")
    gen = torch.Generator().manual_seed(M + N + Kd)
    x = torch.randn(M, Kd, generator=gen)
    w = torch.randn(Kd, N, generator=gen).half().float()  # exactly float16 values
    assert native.exactly_half(w) and not native.exactly_half(w + 1e-4)
    width = native.load().sep_panel_width()
    packed = native.pack_panels(w, width, torch.float16)
    assert packed.dtype == torch.float16
    got = native.gemm(x, packed, N)
    same = native.gemm(x, native.pack_panels(w, width), N)  # float32 panels
    assert torch.equal(got, same)  # the same numbers in the same order
    ref = x.double() @ w.double()
    assert float((got.double() - ref).abs().max()) < 1e-5 * (Kd ** 0.5) * float(ref.abs().max() + 1)


@needs_kernel
@pytest.mark.parametrize("half", [True, False])
def test_float16_valued_models_stream_with_float16_panels(half: bool, monkeypatch: pytest.MonkeyPatch):
    """A model stored in float16 (as the shipped ones) streams from float16
    panels, and the output equals the offline forward as closely as with float32 ones."""
    monkeypatch.setattr(native, "HALF_PANELS", half)
    torch.manual_seed(6)
    model = registry.build("convtasnet", dict(N=40, L=8, B=24, H=48, Sc=16, X=3, R=2, causal=True)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p)).copy_(p.half().float())
    mix = torch.randn(1600)
    with torch.no_grad():
        ref = model(mix[None])[0]
    streamer = Streamer(model, chunk_size=16, backend="native")  # hop 4: 4 frames, one register tile (6 or 8 rows)
    assert streamer.network.native.half == (half and bool(native.load().sep_has_half()))
    assert not Streamer(model, chunk_size=400, backend="native").network.native.half  # 50 frames: float32 is faster
    est = torch.cat([streamer.process(mix[i : i + 16]) for i in range(0, 1600, 16)] + [streamer.flush()], 1)
    assert float((est - ref).abs().max()) <= 1e-5 * float(ref.abs().max())
    model2 = registry.build("convtasnet", dict(N=40, L=8, B=24, H=48, Sc=16, X=3, R=2, causal=True)).eval()
    assert not Streamer(model2, backend="native").network.native.half  # float32 weights: float32 panels


@needs_kernel
def test_gemm_reads_overlapping_rows():
    """The encoder reads frames straight from the samples: row stride hop < Kd = L."""
    lib = native.load()
    hop, L, K, N = 4, 8, 9, 40
    samples = torch.randn((K - 1) * hop + L)
    w = torch.randn(L, N)
    out = torch.zeros(K, N)
    packed = native.pack_panels(w, lib.sep_panel_width())  # kept alive across the call
    lib.sep_gemm(K, N, L, samples.data_ptr(), hop, packed.data_ptr(), 0, out.data_ptr(), N, None, 0)
    ref = samples.unfold(0, L, hop).double() @ w.double()  # [K, L] @ [L, N]
    assert float((out.double() - ref).abs().max()) < 1e-5 * float(ref.abs().max())


@needs_kernel
def test_native_and_torch_steps_agree_on_the_paper_configuration():
    torch.manual_seed(0)
    model = registry.build("convtasnet-paper-causal").eval()
    mix = torch.randn(1200) * 0.1
    a = Streamer(model, chunk_size=64, backend="native")
    b = Streamer(model, chunk_size=64, backend="torch")
    assert (a.backend, b.backend) == ("native", "torch")
    ya = torch.cat([a.process(mix[i : i + 64]) for i in range(0, 1200, 64)] + [a.flush()], 1)
    yb = torch.cat([b.process(mix[i : i + 64]) for i in range(0, 1200, 64)] + [b.flush()], 1)
    assert float((ya - yb).abs().max()) <= 1e-5 * float(yb.abs().max())


@needs_kernel
def test_strided_and_numpy_input():
    """A strided tensor view and a non-contiguous numpy array stream like contiguous input."""
    torch.manual_seed(4)
    model = registry.build("convtasnet", dict(N=8, L=4, B=6, H=10, Sc=5, X=2, R=1, causal=True)).eval()
    base = torch.randn(1200)
    mix = base[::2]  # [600], stride 2
    with torch.no_grad():
        ref = model(mix.contiguous()[None])[0]
    for x in (mix, mix.numpy()):
        streamer = Streamer(model, chunk_size=16, backend="native")
        outs = [streamer.process(x[i : i + 16]) for i in range(0, 600, 16)] + [streamer.flush()]
        est = torch.cat([torch.as_tensor(o) for o in outs], 1)
        assert float((est - ref).abs().max()) <= 1e-5 * float(ref.abs().max())


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 flags")
def test_avx2_build_without_avx512(fresh_loader, monkeypatch: pytest.MonkeyPatch):
    """The kernel's other register tiling (6 rows, 16 vector registers), as a
    CPU without AVX-512 builds it: same products, same streamed output."""
    monkeypatch.setenv(native.EXTRA_FLAGS_ENV, "-mno-avx512f")
    if not native.available():
        pytest.skip(f"cannot build: {native.why_not()}")
    lib = native.load()
    assert lib.sep_panel_width() == 16
    x, w = torch.randn(13, 21), torch.randn(21, 37).half().float()
    got = native.gemm(x, native.pack_panels(w, 16), 37)
    assert float((got.double() - x.double() @ w.double()).abs().max()) < 1e-4
    if lib.sep_has_half():  # F16C loads
        assert torch.equal(native.gemm(x, native.pack_panels(w, 16, torch.float16), 37), got)
    torch.manual_seed(3)
    model = registry.build("convtasnet", dict(N=8, L=4, B=6, H=10, Sc=5, X=3, R=2, causal=True)).eval()
    mix = torch.randn(700)
    with torch.no_grad():
        ref = model(mix[None])[0]
    est = stream_array(model, mix, 7)
    assert float((est - ref).abs().max()) <= 1e-5 * float(ref.abs().max())


def test_disabled_falls_back_to_torch(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SEP_NATIVE", "0")
    model = registry.build("convtasnet", dict(N=8, L=4, B=6, H=10, Sc=5, X=2, R=1, causal=True)).eval()
    assert native.load() is None and "SEP_NATIVE" in native.why_not()
    assert Streamer(model).backend == "torch"
    with pytest.raises(SepError, match="native streaming kernel is unavailable: disabled by SEP_NATIVE=0"):
        Streamer(model, backend="native")
    with pytest.raises(SepError, match="backend must be one of"):
        Streamer(model, backend="fast")


def test_failed_build_falls_back_to_torch(fresh_loader, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    monkeypatch.setattr(native, "_compiler", lambda: "false")
    assert native.load() is None
    assert "could not build the kernel" in native.why_not()
    assert not list(fresh_loader.rglob("*.so"))  # nothing half-written left behind
    model = registry.build("convtasnet", dict(N=8, L=4, B=6, H=10, Sc=5, X=2, R=1, causal=True)).eval()
    assert Streamer(model).backend == "torch"


@needs_kernel
def test_compiler_without_march_native_gets_a_portable_build(fresh_loader, monkeypatch: pytest.MonkeyPatch):
    cc = native._compiler()
    fake = fresh_loader / "oldcc"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do [ "$a" = "-march=native" ] && '
                    '{ echo "error: unknown target CPU" >&2; exit 1; }; done\n'
                    f'exec {cc} "$@"\n')
    fake.chmod(0o755)
    monkeypatch.setattr(native, "_compiler", lambda: str(fake))
    lib = native.load()
    assert lib is not None, native.why_not()
    x, w = torch.randn(5, 12), torch.randn(12, 20)
    got = native.gemm(x, native.pack_panels(w, lib.sep_panel_width()), 20)
    assert float((got.double() - x.double() @ w.double()).abs().max()) < 1e-4


@needs_kernel
def test_build_is_cached(fresh_loader):
    assert native.load() is not None
    built = list(fresh_loader.rglob("stream_blocks-*"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    native._loaded.clear()
    assert native.load() is not None  # loads the cached build, does not compile again
    assert built[0].stat().st_mtime_ns == stamp and len(list(fresh_loader.rglob("stream_blocks-*"))) == 1


def test_cli_backend_choice(monkeypatch: pytest.MonkeyPatch, tmp_path):
    """sep bench --backend: the JSON names the step used; an unavailable kernel is a one-line error."""
    torch.manual_seed(0)
    path = tmp_path / "tiny-causal.safetensors"
    registry.save_model(registry.build("convtasnet", dict(N=8, L=4, B=6, H=10, Sc=5, X=2, R=1, causal=True)), path)
    args = ["bench", "--model", str(path), "--chunk-ms", "8", "--duration", "0.2", "--naive-chunks", "0",
            "--no-offline", "--json"]
    res = CliRunner().invoke(main, [*args, "--backend", "torch"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["backend"] == "torch"
    if native.available():
        res = CliRunner().invoke(main, args)  # auto
        assert res.exit_code == 0, res.output
        assert json.loads(res.output)["backend"] == "native"
    monkeypatch.setenv("SEP_NATIVE", "0")
    res = CliRunner().invoke(main, [*args, "--backend", "native"])
    assert res.exit_code == 1
    assert "native streaming kernel is unavailable" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1

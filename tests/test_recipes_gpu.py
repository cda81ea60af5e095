"""Tests for recipes/gpu: packing data for a lent GPU machine and exporting its runs."""
from __future__ import annotations

import importlib.util
import json
import tarfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from sepcli import registry

REPO = Path(__file__).resolve().parent.parent


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"gpu_{name}", REPO / "recipes" / "gpu" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_requantize_keeps_bits_and_bounds_error():
    pack = _script("pack")
    rng = np.random.default_rng(0)
    x = rng.integers(-32768, 32768, size=10000).astype(np.int16)
    y = pack.requantize(x, 12)
    assert y.dtype == np.int16
    # 12 significant bits: multiples of 16, within half a step (the clip at +32767 aside)
    assert np.all((y.astype(np.int32) % 16 == 0) | (y == 32767))
    assert np.abs(y.astype(np.int32) - x).max() <= 8
    assert np.array_equal(pack.requantize(x, 16), x)


def test_pack_data_leaves_out_test_speakers(tmp_path):
    pack = _script("pack")
    data = tmp_path / "corpus"
    for spk in ("a", "b", "c", "d"):
        (data / "sub" / spk).mkdir(parents=True)
        sf.write(data / "sub" / spk / f"{spk}-1.flac",
                 (np.sin(np.arange(800) * 0.01 * (ord(spk) - 90)) * 0.5).astype(np.float32), 8000)
    (data / "LICENSE.TXT").write_text("CC BY 4.0")
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"test": ["c"], "valid": ["d"]}))
    out = tmp_path / "packed"
    total = pack.pack_data(data, split, out, bits=12)
    got = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.flac"))
    assert got == ["sub/a/a-1.flac", "sub/b/b-1.flac", "sub/d/d-1.flac"]
    assert total == sum(p.stat().st_size for p in out.rglob("*.flac"))
    assert (out / "LICENSE.TXT").read_text() == "CC BY 4.0"
    orig, _ = sf.read(data / "sub" / "a" / "a-1.flac", dtype="int16")
    packed, rate = sf.read(out / "sub" / "a" / "a-1.flac", dtype="int16")
    assert rate == 8000 and np.array_equal(packed, pack.requantize(orig, 12))


def test_export_writes_weights_and_logs(tmp_path, monkeypatch):
    export = _script("export")
    model = registry.build("convtasnet", n_src=2, N=16, L=8, B=8, H=16, Sc=8, X=2, R=1).eval()
    larger = registry.build("convtasnet", n_src=2, N=64, L=8, B=8, H=16, Sc=8, X=2, R=1).eval()
    runs = []
    for name, m in (("small", model), ("big", larger)):
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        registry.save_model(m, run / "best.safetensors")
        (run / "log.jsonl").write_text('{"event": "valid"}\n')
        (run / "config.json").write_text("{}")
        runs.append(run)
    empty = tmp_path / "runs" / "empty"
    empty.mkdir()
    # "big" passes the size limit, so it is stored as float16
    monkeypatch.setattr(export, "MAX_BYTES", (runs[0] / "best.safetensors").stat().st_size)
    out = tmp_path / "out"
    monkeypatch.setattr("sys.argv", ["export.py", *map(str, runs + [empty]), "--out", str(out)])
    assert export.main() == 1  # the run without weights is reported
    small = registry.load_file(out / "small.safetensors")
    big = registry.load_file(out / "big.safetensors")
    meta, tensors = registry.read_checkpoint(out / "big.safetensors")
    assert all(t.dtype == torch.float16 for t in tensors.values() if t.is_floating_point())
    mix = torch.randn(1, 400)
    with torch.no_grad():
        assert torch.equal(small(mix), model(mix))  # float32 kept bit for bit
        ref = larger(mix)
        assert not torch.equal(big(mix), ref)  # float16 rounding...
        assert torch.allclose(big(mix), ref, atol=1e-2 * ref.abs().max().item())  # ...only
    with tarfile.open(out / "runs.tar.gz") as tar:
        names = sorted(tar.getnames())
    assert names == ["big/config.json", "big/log.jsonl", "small/config.json", "small/log.jsonl"]

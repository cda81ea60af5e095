"""sep bench library: measurements on a tiny model, labels, errors."""
from __future__ import annotations

import json

import pytest
import torch

from sepcli import bench, engine, registry
from sepcli.errors import SepError

TINY = dict(N=8, L=4, B=6, H=10, Sc=5, P=3, X=3, R=2)
RESULT_KEYS = {
    "chunk_ms", "rtf", "p50_ms", "p90_ms", "p99_ms", "max_ms", "algorithmic_latency_ms",
    "total_latency_ms", "max_abs_diff", "naive_rtf",
}


def tiny(causal: bool = True) -> torch.nn.Module:
    torch.manual_seed(0)
    return registry.build("convtasnet", {**TINY, "causal": causal}).eval()


def test_run_bench_tiny_model():
    result = bench.run_bench(
        tiny(), chunk_ms=[1, 2.5], duration=0.3, naive_chunks=2, offline_model=tiny(causal=False)
    )
    d = json.loads(json.dumps(result.to_dict()))  # JSON-serialisable
    assert {"device", "threads", "model", "params", "results", "offline_rtf"} <= set(d)
    assert d["device"] == "cpu" and d["threads"] == 1 and d["params"] == registry.count_parameters(tiny())
    assert d["random_weights"] is False  # a module passed in is taken as is
    assert [r["chunk_ms"] for r in d["results"]] == [1.0, 2.5]
    for r in d["results"]:
        assert RESULT_KEYS <= set(r)
        assert r["chunk_samples"] == round(r["chunk_ms"] * 8)
        assert r["chunks"] == 2400 // r["chunk_samples"]
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["max_ms"]
        assert r["rtf"] > 0 and r["naive_rtf"] > 0 and r["naive_chunks"] == 2
        assert r["algorithmic_latency_ms"] == pytest.approx(1000 * (4 + r["chunk_samples"]) / 8000)
        assert r["total_latency_ms"] == pytest.approx(r["algorithmic_latency_ms"] + r["p99_ms"])
        assert r["max_rel_diff"] < 1e-5
    assert d["offline_rtf"] > 0
    assert d["offline_precision"] == engine.set_precision(tiny(causal=False), "auto", "cpu")


def test_defaults_to_paper_config_with_random_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("SEP_MODELS_DIR", str(tmp_path))  # nothing shipped here
    model, label, random_weights = bench.load_bench_model(None, torch.device("cpu"))
    assert label == "convtasnet-paper-causal" and random_weights
    assert model.causal and model.config.N == 512 and model.config.X == 8
    _, label, random_weights = bench.load_bench_model(None, torch.device("cpu"), causal=False)
    assert label == "convtasnet-paper" and random_weights


def test_checkpoint_path_is_not_random(tmp_path):
    path = tmp_path / "tiny.safetensors"
    registry.save_model(tiny(), path)
    _, label, random_weights = bench.load_bench_model(str(path), torch.device("cpu"))
    assert label == str(path) and not random_weights


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_unavailable_is_one_clear_error():
    with pytest.raises(SepError, match="CUDA is not available"):
        bench.run_bench(tiny(), device="cuda", duration=0.1)


def test_bad_settings():
    with pytest.raises(SepError, match="less than one hop"):
        bench.run_bench(tiny(), chunk_ms=[0.1], duration=0.1, offline_model=False)
    with pytest.raises(SepError, match="non-causal"):
        bench.run_bench(tiny(causal=False), duration=0.1, offline_model=False)
    with pytest.raises(SepError, match="duration"):
        bench.run_bench(tiny(), duration=0, offline_model=False)
    with pytest.raises(SepError, match="unsupported device|unknown device"):
        bench.run_bench(tiny(), device="tpu", duration=0.1)


def test_threads_are_restored():
    before = torch.get_num_threads()
    result = bench.run_bench(tiny(), chunk_ms=[2], duration=0.05, naive_chunks=0, threads=2, offline_model=False)
    assert result.threads == 2 and result.results[0].naive_rtf is None
    assert torch.get_num_threads() == before


def test_run_bench_averaged_passes():
    torch.manual_seed(0)
    net = registry.build("convtasnet", {**TINY, "L": 8, "causal": True}).eval()
    assert bench.run_bench(net, chunk_ms=[2], duration=0.2, naive_chunks=1, offline_model=False).passes == 1  # fast
    d = bench.run_bench(net, chunk_ms=[2], duration=0.2, naive_chunks=1, offline_model=False,
                        quality="high").to_dict()
    assert d["passes"] == 2 and d["pass_signs"] is False  # the causal model's high preset
    (r,) = d["results"]
    assert r["algorithmic_latency_ms"] == pytest.approx(1000 * (8 + 16 + 2) / 8000)  # L + chunk + hop/2
    assert r["max_rel_diff"] < 1e-5  # against the offline average of the two passes
    one = bench.run_bench(net, chunk_ms=[2], duration=0.2, naive_chunks=1, offline_model=False, passes=1,
                          quality="high")  # --passes overrides the preset
    assert one.passes == 1 and one.results[0].algorithmic_latency_ms == pytest.approx(1000 * 24 / 8000)

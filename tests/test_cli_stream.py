"""`sep stream` (files and stdin) and `sep bench` on the command line."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from sepcli import registry, streaming
from sepcli.cli import main

TINY = dict(N=8, L=4, B=6, H=10, Sc=5, P=3, X=3, R=2)
TOL = 1e-5


@pytest.fixture
def models(tmp_path, monkeypatch):
    """A tiny causal and a tiny non-causal checkpoint; nothing shipped."""
    monkeypatch.setenv("SEP_MODELS_DIR", str(tmp_path / "shipped"))
    monkeypatch.setenv("COLUMNS", "80")
    torch.manual_seed(0)
    causal = registry.build("convtasnet", {**TINY, "causal": True}).eval()
    registry.save_model(causal, tmp_path / "causal.safetensors")
    registry.save_model(registry.build("convtasnet", TINY), tmp_path / "offline.safetensors")
    return {"causal": str(tmp_path / "causal.safetensors"), "offline": str(tmp_path / "offline.safetensors"),
            "model": causal, "dir": tmp_path}


def offline(model: torch.nn.Module, mix: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(mix.astype(np.float32))[None])[0].numpy()  # [S, T]


def read_tracks(paths: list[str]) -> np.ndarray:
    return np.stack([sf.read(p, dtype="float32")[0] for p in paths])


def invoke(*args: str, input: bytes | None = None):
    return CliRunner().invoke(main, list(args), input=input)


def test_stream_file_equals_offline_causal(models, tmp_path):
    mix = (0.05 * np.random.default_rng(0).standard_normal(4321)).astype(np.float32)
    sf.write(tmp_path / "talk.wav", mix, 8000, subtype="FLOAT")
    res = invoke("stream", str(tmp_path / "talk.wav"), "--model", models["causal"], "--out", str(tmp_path / "out"),
                 "--chunk-ms", "3", "--float", "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["outputs"] == [str(tmp_path / "out" / "talk" / f"s{i}.wav") for i in (1, 2)]
    assert info["chunks"] == 4321 // 24 + 1 and info["chunk_ms"] == 3.0 and info["compute_rtf"] > 0
    est = read_tracks(info["outputs"])
    # the causal preset's running equalizer streams with the model
    assert info["equalize"] == 12.0
    ref = streaming.offline(models["model"], mix, equalize=12.0) * 10 ** (info["gain_db"] / 20)
    assert est.shape == ref.shape
    assert np.abs(est - ref).max() <= TOL * np.abs(ref).max()
    res = invoke("stream", str(tmp_path / "talk.wav"), "--model", models["causal"], "--out", str(tmp_path / "raw"),
                 "--chunk-ms", "3", "--float", "--json", "--equalize", "0")
    info = json.loads(res.stdout)
    assert res.exit_code == 0 and info["equalize"] == 0.0
    ref = offline(models["model"], mix) * 10 ** (info["gain_db"] / 20)
    assert np.abs(read_tracks(info["outputs"]) - ref).max() <= TOL * np.abs(ref).max()


def test_stream_backends_write_the_same_tracks(models, tmp_path):
    """--backend torch and the default (the compiled step where it builds) give the same files."""
    from sepcli import native

    mix = (0.05 * np.random.default_rng(2).standard_normal(3000)).astype(np.float32)
    sf.write(tmp_path / "talk.wav", mix, 8000, subtype="FLOAT")
    tracks = {}
    for backend in ("auto", "torch"):
        res = invoke("stream", str(tmp_path / "talk.wav"), "--model", models["causal"], "--out",
                     str(tmp_path / backend), "--float", "--json", "--backend", backend)
        assert res.exit_code == 0, res.output
        info = json.loads(res.stdout)
        assert info["backend"] == ("native" if backend == "auto" and native.available() else "torch")
        tracks[backend] = read_tracks(info["outputs"])
    assert np.abs(tracks["auto"] - tracks["torch"]).max() <= TOL * np.abs(tracks["torch"]).max()
    res = invoke("stream", str(tmp_path / "talk.wav"), "--model", models["causal"], "--out", str(tmp_path / "x"),
                 "--backend", "gpu")
    assert res.exit_code == 2 and "Traceback" not in res.output


def test_stream_file_keeps_rate_and_length_and_skips_existing(models, tmp_path):
    stereo = 0.05 * np.random.default_rng(1).standard_normal((16001, 2))
    sf.write(tmp_path / "st.flac", stereo, 16000)
    out = str(tmp_path / "out")
    res = invoke("stream", str(tmp_path / "st.flac"), "--model", models["causal"], "--out", out)
    assert res.exit_code == 0, res.output
    assert "real-time factor" in res.output
    for i in (1, 2):
        info = sf.info(tmp_path / "out" / "st" / f"s{i}.wav")
        assert (info.samplerate, info.frames, info.subtype) == (16000, 16001, "PCM_16")
    res = invoke("stream", str(tmp_path / "st.flac"), "--model", models["causal"], "--out", out)
    assert res.exit_code == 0 and "Skipped" in res.output
    res = invoke("stream", str(tmp_path / "st.flac"), "--model", models["causal"], "--out", out, "--force", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["status"] == "ok"


def test_stream_stdin_s16le_equals_offline(models, tmp_path):
    pcm = (np.random.default_rng(2).standard_normal(3000) * 2000).astype("<i2")
    res = invoke("stream", "-", "--stdin-rate", "8000", "--model", models["causal"], "--out",
                 str(tmp_path / "live"), "--json", input=pcm.tobytes())
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["outputs"][0].endswith("stdin/s1.wav") and info["frames"] == 3000
    est = read_tracks(info["outputs"])
    ref = streaming.offline(models["model"], pcm.astype(np.float32) / 32768, equalize=12.0)
    assert np.abs(est - ref).max() <= TOL * np.abs(ref).max()


def test_stream_stdin_resampled_keeps_exact_length(models, tmp_path):
    x = (0.1 * np.random.default_rng(3).standard_normal(12345)).astype("<f4")
    res = invoke("stream", "-", "--stdin-rate", "44100", "--stdin-format", "f32le", "--name", "mic",
                 "--model", models["causal"], "--out", str(tmp_path / "live"), input=x.tobytes() + b"\x00")
    assert res.exit_code == 0, res.output
    for i in (1, 2):
        info = sf.info(tmp_path / "live" / "mic" / f"s{i}.wav")
        assert (info.samplerate, info.frames, info.subtype) == (44100, 12345, "FLOAT")


def test_stream_usage_errors(models, tmp_path):
    res = invoke("stream", "-", "--model", models["causal"], input=b"")
    assert res.exit_code == 2 and "--stdin-rate" in res.output
    res = invoke("stream", "-", "--stdin-rate", "8000", "--model", models["causal"], "--out", str(tmp_path), input=b"")
    assert res.exit_code == 1 and "0 samples" in res.output
    sf.write(tmp_path / "a.wav", np.zeros(100), 8000)
    res = invoke("stream", str(tmp_path / "a.wav"), "--stdin-rate", "8000", "--model", models["causal"])
    assert res.exit_code == 2
    res = invoke("stream", str(tmp_path / "a.wav"), "--model", models["offline"], "--out", str(tmp_path / "o"))
    assert res.exit_code == 1 and "non-causal" in res.output and "Traceback" not in res.output
    res = invoke("stream", str(tmp_path / "missing.wav"), "--model", models["causal"], "--out", str(tmp_path / "o"))
    assert res.exit_code == 1 and res.output.startswith("Error:")


def test_stream_default_model(models, tmp_path):
    sf.write(tmp_path / "a.wav", 0.01 * np.ones(500), 8000)
    res = invoke("stream", str(tmp_path / "a.wav"), "--out", str(tmp_path / "o"))
    assert res.exit_code == 1 and "convtasnet-causal" in res.output  # nothing shipped yet
    shipped = models["dir"] / "shipped"
    sha = registry.save_model(models["model"], shipped / "convtasnet-causal.safetensors")
    (shipped / "convtasnet-causal.json").write_text(json.dumps({"sha256": sha, "causal": True}))
    res = invoke("stream", str(tmp_path / "a.wav"), "--out", str(tmp_path / "o"), "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["model"] == "convtasnet-causal"


def test_bench_json(models):
    res = invoke("bench", "--model", models["causal"], "--offline-model", models["offline"], "--duration", "0.2",
                 "--chunk-ms", "1,4", "--naive-chunks", "1", "--json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert {"device", "threads", "model", "params", "results", "offline_rtf"} <= set(d)
    assert d["model"] == models["causal"] and d["random_weights"] is False and d["threads"] == 1
    for r in d["results"]:
        assert {"chunk_ms", "rtf", "p50_ms", "p90_ms", "p99_ms", "max_ms", "algorithmic_latency_ms",
                "total_latency_ms", "max_abs_diff", "naive_rtf"} <= set(r)
        assert r["max_rel_diff"] < TOL


def test_bench_table_labels_random_weights():
    registry.register_preset("tiny-causal-for-bench-test", "convtasnet", "test only", **TINY, causal=True)
    res = invoke("bench", "--model", "tiny-causal-for-bench-test", "--duration", "0.1", "--chunk-ms", "2",
                 "--naive-chunks", "1", "--no-offline")
    assert res.exit_code == 0, res.output
    assert "(random weights)" in res.output and "RTF" in res.output and "Speed" in res.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_bench_cuda_unavailable(models):
    res = invoke("bench", "--device", "cuda", "--model", models["causal"])
    assert res.exit_code == 1
    assert res.output.startswith("Error:") and "CUDA is not available" in res.output
    assert res.output.count("\n") == 1


@pytest.mark.parametrize("cmd", ["stream", "bench"])
def test_help_has_example(cmd):
    res = invoke(cmd, "--help")
    assert res.exit_code == 0 and "Example:" in res.output


def test_stream_averages_the_models_passes(tmp_path, monkeypatch):
    """--quality high streams a causal model's 2 passes (file and stdin), equal
    to their offline average; --passes 1 overrides it; the default (fast) streams one."""
    monkeypatch.setenv("SEP_MODELS_DIR", str(tmp_path / "shipped"))
    torch.manual_seed(1)
    model = registry.build("convtasnet", {**TINY, "L": 8, "causal": True}).eval()
    registry.save_model(model, tmp_path / "two.safetensors")
    mix = (0.05 * np.random.default_rng(3).standard_normal(2345)).astype(np.float32)
    sf.write(tmp_path / "talk.wav", mix, 8000, subtype="FLOAT")
    two = streaming.offline(model, mix, passes=2, equalize=12.0)  # the preset's equalizer around the passes
    one = streaming.offline(model, mix, equalize=12.0)
    assert np.abs(two - one).max() > 1e-3 * np.abs(two).max()  # the passes matter
    for extra, ref, n in (((), two, 2), (("--passes", "1"), one, 1)):
        out = tmp_path / f"out{n}"
        res = invoke("stream", str(tmp_path / "talk.wav"), "--model", str(tmp_path / "two.safetensors"), "--out",
                     str(out), "--float", "--json", "--quality", "high", *extra)
        assert res.exit_code == 0, res.output
        info = json.loads(res.stdout)
        assert info["passes"] == n
        est = read_tracks(info["outputs"])
        scaled = ref * 10 ** (info["gain_db"] / 20)
        assert np.abs(est - scaled).max() <= TOL * np.abs(scaled).max()
    res = invoke("stream", "-", "--stdin-rate", "8000", "--stdin-format", "f32le", "--model",
                 str(tmp_path / "two.safetensors"), "--out", str(tmp_path / "live"), "--json", "--quality", "high",
                 input=mix.tobytes())
    assert res.exit_code == 0, res.output
    est = read_tracks(json.loads(res.stdout)["outputs"])
    assert np.abs(est - two).max() <= TOL * np.abs(two).max()
    res = invoke("stream", str(tmp_path / "talk.wav"), "--model", str(tmp_path / "two.safetensors"), "--out",
                 str(tmp_path / "fast"), "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["passes"] == 1  # the default preset: fast
    res = invoke("stream", str(tmp_path / "talk.wav"), "--model", str(tmp_path / "two.safetensors"), "--passes", "0")
    assert res.exit_code != 0 and "Traceback" not in res.output


def test_stream_warns_when_slower_than_real_time(models, tmp_path, monkeypatch):
    from sepcli import streaming

    slow = {"chunks": 3, "compute_rtf": 1.5, "p50_ms": 12.0, "p99_ms": 13.0, "max_ms": 14.0}
    sf.write(tmp_path / "a.wav", 0.01 * np.ones(500), 8000)
    res = invoke("stream", str(tmp_path / "a.wav"), "--model", models["causal"], "--out", str(tmp_path / "o"))
    assert res.exit_code == 0 and "slower than real time" not in res.output  # a tiny model is fast
    monkeypatch.setattr(streaming.ChunkTimes, "summary", lambda self: slow)
    res = invoke("stream", str(tmp_path / "a.wav"), "--model", models["causal"], "--out", str(tmp_path / "o"),
                 "--force", "--passes", "2")
    assert res.exit_code == 0, res.output
    assert "slower than real time (compute 1.50x" in res.stderr and "--passes 1" in res.stderr

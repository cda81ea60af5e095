"""`sep separate`: options, messages, exit status, skip/force, JSON."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from sepcli import api, registry
from sepcli.cli import main, separate_cmd

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> str:
    torch.manual_seed(0)
    model = registry.build("convtasnet", N=16, L=16, B=8, H=16, Sc=8, X=2, R=1)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    registry.save_model(model, path)
    return str(path)


def write(path: Path, seconds: float = 0.4, rate: int = 8000, channels: int = 1, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    x = 0.2 * np.random.default_rng(seed).standard_normal((int(seconds * rate), channels))
    sf.write(str(path), x.astype(np.float32), rate)
    return path


def run(*args: str) -> "CliRunner.invoke":
    return CliRunner().invoke(main, ["separate", *args], catch_exceptions=False)


def test_help_has_example_and_every_option_has_help() -> None:
    result = CliRunner().invoke(main, ["separate", "--help"])
    assert result.exit_code == 0 and "Example:" in result.output
    for param in separate_cmd.params:
        if param.param_type_name == "option":
            assert param.help, param.name


def test_cli_defaults_match_the_library() -> None:
    defaults = {p.name: p.default for p in separate_cmd.params}
    assert defaults["segment"] is None  # the model's default_segment, else api.DEFAULT_SEGMENT
    assert defaults["overlap"] is None  # the --quality preset's, which starts from api.DEFAULT_OVERLAP
    assert defaults["filename"] == api.DEFAULT_FILENAME
    assert defaults["precision"] == "auto"
    assert defaults["passes"] is None  # the model's default_passes, else 1
    assert defaults["pass_signs"] is None  # the model's default_pass_signs, else False
    assert tuple(next(p for p in separate_cmd.params if p.name == "precision").type.choices) == api.PRECISIONS


def test_separate_then_skip_then_force(tmp_path: Path, tiny_ckpt: str) -> None:
    src = write(tmp_path / "talk.wav", rate=16000, channels=2)
    out = tmp_path / "out"
    r = run(str(src), "--model", tiny_ckpt, "--out", str(out))
    assert r.exit_code == 0, r.output
    assert "talk.wav ->" in r.stdout and "2 speakers" in r.stdout
    for i in (1, 2):
        info = sf.info(str(out / "talk" / f"s{i}.wav"))
        assert (info.samplerate, info.frames, info.subtype) == (16000, 6400, "PCM_16")
    assert "━" not in r.stderr  # no progress bar when stderr is not a terminal
    r = run(str(src), "--model", tiny_ckpt, "--out", str(out))
    assert r.exit_code == 0 and "skipped" in r.stdout and "--force" in r.stdout
    r = run(str(src), "--model", tiny_ckpt, "--out", str(out), "--force", "--float", "--threads", "1")
    assert r.exit_code == 0 and "talk.wav ->" in r.stdout
    assert sf.info(str(out / "talk" / "s1.wav")).subtype == "FLOAT"


def test_per_file_errors_do_not_stop_the_batch(tmp_path: Path, tiny_ckpt: str) -> None:
    write(tmp_path / "in" / "a.wav")
    (tmp_path / "in" / "b.wav").write_bytes(b"not audio")
    write(tmp_path / "in" / "c.wav", seed=1)
    r = run(str(tmp_path / "in"), str(tmp_path / "nothing-*.wav"), "--model", tiny_ckpt,
            "--out", str(tmp_path / "out"))
    assert r.exit_code == 1
    assert (tmp_path / "out" / "a" / "s1.wav").exists() and (tmp_path / "out" / "c" / "s2.wav").exists()
    assert "Error:" in r.stderr and "b.wav" in r.stderr and "no files match" in r.stderr
    assert "2 separated, 2 failed" in r.stderr
    assert "Traceback" not in r.output


def test_json_summary_on_stdout(tmp_path: Path, tiny_ckpt: str) -> None:
    src = write(tmp_path / "x.flac", rate=44100)
    r = run(str(src), "--model", tiny_ckpt, "--out", str(tmp_path / "o"), "--json", "--filename", "{stem}_{i}.wav")
    assert r.exit_code == 0
    summary = json.loads(r.stdout)
    assert (summary["ok"], summary["failed"]) == (1, 0)
    f = summary["files"][0]
    assert f["status"] == "ok" and f["sample_rate"] == 44100 and f["n_src"] == 2
    assert [Path(p).name for p in f["outputs"]] == ["x_1.wav", "x_2.wav"]
    assert "x.flac ->" in r.stderr  # human lines moved off stdout
    r = run(str(src), "--model", tiny_ckpt, "--out", str(tmp_path / "o2"), "--json", "--precision", "float32")
    assert json.loads(r.stdout)["precision"] == "float32"
    r = run(str(src), "--model", tiny_ckpt, "--out", str(tmp_path / "o3"), "--json", "--precision", "bfloat16")
    assert json.loads(r.stdout)["precision"] == "bfloat16"



def test_passes_average_the_model_and_show_in_the_summary(tmp_path: Path, tiny_ckpt: str) -> None:
    src = write(tmp_path / "x.wav", seconds=1.0)
    tracks = {}
    for n in (1, 2):
        r = run(str(src), "--model", tiny_ckpt, "--out", str(tmp_path / f"p{n}"), "--json", "--passes", str(n),
                "--float", "-q")
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["passes"] == n
        tracks[n] = np.stack([sf.read(tmp_path / f"p{n}" / "x" / f"s{i}.wav", dtype="float32")[0] for i in (1, 2)])
    # The same as the library's two-pass Separator, and not the one-pass output.
    want = api.Separator(tiny_ckpt, device="cpu", passes=2).separate(sf.read(src, dtype="float32")[0], 8000)
    np.testing.assert_allclose(tracks[2], want, rtol=0, atol=1e-6)
    assert np.abs(tracks[2] - tracks[1]).max() > 1e-3
    r = CliRunner().invoke(main, ["separate", str(src), "--model", tiny_ckpt, "--passes", "0"])
    assert r.exit_code == 2 and "passes" in r.output
    # --pass-signs: what the library's Separator gives with the same setting
    r = run(str(src), "--model", tiny_ckpt, "--out", str(tmp_path / "ps"), "--json", "--passes", "2",
            "--pass-signs", "--float", "-q")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["pass_signs"] is True and summary["passes"] == 2
    signed = np.stack([sf.read(tmp_path / "ps" / "x" / f"s{i}.wav", dtype="float32")[0] for i in (1, 2)])
    want = api.Separator(tiny_ckpt, device="cpu", passes=2, pass_signs=True).separate(
        sf.read(src, dtype="float32")[0], 8000)
    np.testing.assert_allclose(signed, want, rtol=0, atol=1e-6)
    assert np.abs(signed - tracks[2]).max() > 1e-3  # not the delays-only passes


def test_speeds_average_slowed_views_and_show_in_the_summary(tmp_path: Path, tiny_ckpt: str) -> None:
    src = write(tmp_path / "x.wav", seconds=1.0)
    r = run(str(src), "--model", tiny_ckpt, "--out", str(tmp_path / "s"), "--json", "--speeds", "1,0.9", "--float", "-q")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["speeds"] == [1.0, 0.9]
    got = np.stack([sf.read(tmp_path / "s" / "x" / f"s{i}.wav", dtype="float32")[0] for i in (1, 2)])
    mix = sf.read(src, dtype="float32")[0]
    want = api.Separator(tiny_ckpt, device="cpu", speeds=[1.0, 0.9]).separate(mix, 8000)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    plain = api.Separator(tiny_ckpt, device="cpu").separate(mix, 8000)
    assert np.abs(got - plain).max() > 1e-3
    for bad, code, words in (("1,x", 2, "--speeds"), (",", 2, "--speeds"), ("1,5", 1, "speed must be")):
        r = CliRunner().invoke(main, ["separate", str(src), "--model", tiny_ckpt, "--out", str(tmp_path / "b"),
                                      "--speeds", bad])
        assert r.exit_code == code and words in r.output, r.output
        assert "Traceback" not in r.output


def test_quiet_prints_nothing_on_success(tmp_path: Path, tiny_ckpt: str) -> None:
    r = run(str(write(tmp_path / "x.wav")), "--model", tiny_ckpt, "--out", str(tmp_path / "o"), "-q")
    assert r.exit_code == 0 and r.stdout == "" and r.stderr == ""


def test_quiet_silences_warnings_from_parallel_jobs_too(tmp_path: Path, tiny_ckpt: str) -> None:
    # Stereo inputs log a downmix warning in the worker processes.
    files = [str(write(tmp_path / f"{k}.wav", channels=2, seed=k)) for k in range(2)]
    r = run(*files, "--model", tiny_ckpt, "--out", str(tmp_path / "o"), "--jobs", "2", "--threads", "1")
    assert r.exit_code == 0 and r.stderr.count("downmixed") == 2  # shown without -q
    r = run(*files, "--model", tiny_ckpt, "--out", str(tmp_path / "q"), "--jobs", "2", "--threads", "1", "-q")
    assert r.exit_code == 0 and r.stdout == "" and r.stderr == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "cuda"], "CUDA is not available"),
        (["--num-speakers", "3"], "exactly 2 speakers"),
        (["--num-speakers", "many"], "positive integer or 'auto'"),
        (["--filename", "{stem}.wav"], "{i}"),
    ],
)
def test_option_errors_are_one_line(tmp_path: Path, tiny_ckpt: str, args: list[str], message: str) -> None:
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("CUDA present")
    r = run(str(write(tmp_path / "x.wav")), "--model", tiny_ckpt, "--out", str(tmp_path / "o"), *args)
    assert r.exit_code == 1
    assert message in r.stderr and r.stderr.startswith("Error:") and len(r.stderr.strip().splitlines()) == 1


def test_without_model_and_without_shipped_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEP_MODELS_DIR", str(tmp_path / "empty"))
    r = run(str(write(tmp_path / "x.wav")), "--out", str(tmp_path / "o"))
    assert r.exit_code == 1 and "sep models" in r.stderr and "--model" in r.stderr


def test_quality_chooses_the_preset_and_options_override_it(tmp_path: Path, tiny_ckpt: str) -> None:
    src = write(tmp_path / "x.wav", seconds=1.0)
    r = run(str(src), "--model", tiny_ckpt, "--out", str(tmp_path / "f"), "--json", "-q")
    assert r.exit_code == 0, r.output
    fast = json.loads(r.stdout)
    assert (fast["quality"], fast["passes"], fast["pass_signs"], fast["speeds"]) == ("fast", 1, False, [1.0])
    r = run(str(src), "--model", tiny_ckpt, "--out", str(tmp_path / "h"), "--json", "-q", "--quality", "high",
            "--float")
    high = json.loads(r.stdout)
    assert (high["quality"], high["passes"], high["pass_signs"], high["speeds"]) == ("high", 4, True, [1.0, 0.92, 0.88])
    got = np.stack([sf.read(tmp_path / "h" / "x" / f"s{i}.wav", dtype="float32")[0] for i in (1, 2)])
    want = api.Separator(tiny_ckpt, device="cpu", quality="high").separate(sf.read(src, dtype="float32")[0], 8000)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    r = run(str(src), "--model", tiny_ckpt, "--out", str(tmp_path / "o"), "--json", "-q", "--quality", "high",
            "--passes", "2", "--speeds", "1")
    assert (json.loads(r.stdout)["passes"], json.loads(r.stdout)["speeds"]) == (2, [1.0])
    r = CliRunner().invoke(main, ["separate", str(src), "--model", tiny_ckpt, "--quality", "best"])
    assert r.exit_code == 2 and "quality" in r.output
    assert "--shifts" in CliRunner().invoke(main, ["separate", "--help"]).output

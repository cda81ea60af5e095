"""CLI tests for ``sep mix`` and ``sep train``: options, errors, kill -9 and resume,
and a 2-process DistributedDataParallel run (torchrun, gloo)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from sepcli.cli import main
from tests.test_data import make_corpus

REPO = Path(__file__).resolve().parent.parent
TINY = ["--set", "family=convtasnet", "--set", "model.N=16", "--set", "model.L=8", "--set", "model.B=8",
        "--set", "model.H=16", "--set", "model.Sc=8", "--set", "model.X=2", "--set", "model.R=1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("cli-data")
    make_corpus(root / "corpus", n_speakers=6, n_utts=3)
    split = root / "split.json"
    split.write_text(json.dumps({"valid": ["spk4", "spk5"], "test": []}))
    return {"corpus": str(root / "corpus"), "split": str(split)}


def tiny_args(data: dict, out: Path, *extra: str) -> list[str]:
    return ["train", *TINY, "--set", f"train={data['corpus']}", "--set", f"speakers_split={data['split']}",
            "--set", "segment=0.25", "--set", "epoch_size=16", "--set", "valid_size=4",
            "--set", "valid_segment=0.25", "--set", "log_every=1", "--threads", "1", "--out", str(out), "-q",
            *extra]


def run_cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def env() -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return e


@pytest.mark.parametrize("name", ["mix", "train"])
def test_help_has_example_and_every_option_is_documented(name):
    cmd = main.commands[name]
    result = run_cli(name, "--help")
    assert result.exit_code == 0 and "Example:" in result.output
    for p in cmd.params:
        if p.param_type_name == "option" and p.name != "help":
            assert p.help, f"--{p.name} has no help text"


def test_sep_mix_cli_is_deterministic_and_reports(data, tmp_path):
    a = run_cli("mix", data["corpus"], "--out", str(tmp_path / "a"), "-n", "3", "--segment", "0.5", "--seed", "4")
    run_cli("mix", data["corpus"], "--out", str(tmp_path / "b"), "-n", "3", "--segment", "0.5", "--seed", "4")
    assert a.exit_code == 0 and "Wrote 3 2-speaker mixtures" in a.output
    for f in ("mix/0002.wav", "s1/0002.wav", "s2/0002.wav", "metadata.csv"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    again = run_cli("mix", data["corpus"], "--out", str(tmp_path / "a"), "-n", "3")
    assert again.exit_code == 1 and "--force" in again.output


def test_sep_mix_split_cli(data, tmp_path):
    r = run_cli("mix", data["corpus"], "--out", str(tmp_path / "v"), "-n", "6", "--speakers-split", data["split"],
                "--split", "valid")
    assert r.exit_code == 0 and "2 speakers" in r.output
    text = (tmp_path / "v" / "metadata.csv").read_text()
    assert "spk4" in text and "spk5" in text and "spk0" not in text


@pytest.mark.parametrize("args, message", [
    (["mix", "{empty}", "--out", "{tmp}/o", "-n", "2"], "no audio files"),
    (["mix", "{corpus}", "--out", "{tmp}/o", "-n", "2", "--snr-range", "5"], "LOW,HIGH"),
    (["train", "--set", "family=convtasnet", "--set", "train={empty}", "--out", "{tmp}/r"], "no audio files"),
    (["train", "--config", "{tmp}/missing.toml", "--out", "{tmp}/r"], "recipe not found"),
    (["train", "--resume", "{tmp}/none"], "no checkpoint"),
    (["train", "--set", "train={corpus}", "--out", "{tmp}/r"], "--config RECIPE or --set family"),
    (["train", "--set", "family=convtasnet", "--set", "train={corpus}", "--out", "{tmp}/r",
      "--set", "teacher={tmp}/none.safetensors"], "model file not found"),
    (["train", "--set", "family=convtasnet", "--set", "train={corpus}", "--out", "{tmp}/r",
      "--set", "teacher=convtasnet", "--set", "distill_weight=2"], "distill_weight must be between 0 and 1"),
    (["train", "--set", "family=convtasnet", "--set", "batch_sze=2", "--out", "{tmp}/r"],
     "unknown training setting(s): batch_sze (did you mean batch_size?)"),
    (["train", "--set", "family=convtasnet", "--set", "augment.reverbb=0.5", "--out", "{tmp}/r"],
     "unknown augment setting(s): reverbb (did you mean reverb?)"),
    (["train", "--set", "family=convtasnet", "--set", "train={corpus}", "--set", "model.XX=2",
      "--out", "{tmp}/r"], "unknown convtasnet config key(s): XX (did you mean X?)"),
    (["train", "--set", "family=convtasnet", "--epochs", "2", "--out", "{tmp}/r"], "No such option '--epochs'"),
])
def test_bad_input_is_one_line_error(data, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    args = [a.format(empty=tmp_path / "empty", tmp=tmp_path, corpus=data["corpus"]) for a in args]
    r = CliRunner().invoke(main, args)
    assert r.exit_code in (1, 2), r.output
    assert message in r.output and "Traceback" not in r.output


def test_train_cli_runs_resumes_and_reports(data, tmp_path):
    run = tmp_path / "run"
    r = run_cli(*tiny_args(data, run, "--set", "max_steps=2"))
    assert r.exit_code == 0, r.output
    assert "stopped at max_steps after 2 steps" in r.output and f"sep train --resume {run}" in r.output
    assert json.loads((run / "config.json").read_text())["model"]["N"] == 16
    r = run_cli("train", "--resume", str(run), "--set", "max_epochs=1", "-q")
    assert r.exit_code == 0, r.output
    assert "finished all epochs after 4 steps" in r.output and "best.safetensors" in r.output
    r = CliRunner().invoke(main, ["train", "--resume", str(run), "--lr", "0.5"])
    assert r.exit_code == 1 and "cannot change 'lr'" in r.output


def test_train_cli_recipe_with_overrides(data, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        '[model]\nfamily = "convtasnet"\n[model.config]\nN = 16\nL = 8\nB = 8\nH = 16\nSc = 8\nX = 2\nR = 1\n'
        f'[data]\ntrain = "{data["corpus"]}"\nspeakers_split = "{data["split"]}"\nsegment = 0.25\n'
        'epoch_size = 16\nvalid_size = 4\nvalid_segment = 0.25\n[optim]\nbatch_size = 2\nlr = 0.01\n'
    )
    r = run_cli("train", "--config", str(recipe), "--out", str(tmp_path / "run"), "--lr", "0.002",
                "--set", "batch_size=4", "--set", "max_steps=1", "--threads", "1", "-q")
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["lr"] == 0.002 and cfg["batch_size"] == 4 and cfg["segment"] == 0.25
    assert (tmp_path / "run" / "recipe.toml").read_text() == recipe.read_text()


def _last_step(run: Path) -> int:
    try:
        return int(torch.load(run / "last.pt", weights_only=True)["global_step"])
    except (FileNotFoundError, RuntimeError, EOFError):
        return -1


def test_kill_9_then_resume_matches_an_uninterrupted_run(data, tmp_path):
    killed = tmp_path / "killed"
    args = tiny_args(data, killed, "--set", "checkpoint_minutes=0.00001", "--set", "max_epochs=200")
    proc = subprocess.Popen([sys.executable, "-m", "sepcli", *args], env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while _last_step(killed) < 5 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    step = _last_step(killed)
    assert 5 <= step
    target = step + 3
    r = run_cli("train", "--resume", str(killed), "--set", f"max_steps={target}", "--threads", "1", "-q")
    assert r.exit_code == 0, r.output
    r = run_cli(*tiny_args(data, tmp_path / "straight", "--set", "max_epochs=200", "--set", f"max_steps={target}"))
    assert r.exit_code == 0, r.output
    a = torch.load(killed / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    assert a["global_step"] == b["global_step"] == target
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    steps = [json.loads(x)["step"] for x in (killed / "log.jsonl").read_text().splitlines()
             if '"train"' in x]
    assert steps == list(range(1, target + 1))


def test_sigterm_checkpoints_and_stops(data, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "sepcli", *tiny_args(data, run, "--set", "max_epochs=200")],
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (run / "log.jsonl").is_file() or (run / "log.jsonl").stat().st_size == 0:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert b"interrupted" in out
    logged = [json.loads(x)["step"] for x in (run / "log.jsonl").read_text().splitlines() if '"train"' in x]
    assert _last_step(run) == logged[-1]  # the checkpoint holds every logged step


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(data, tmp_path):
    common = ["--set", "max_epochs=2", "--set", "seed=3"]
    r = run_cli(*tiny_args(data, tmp_path / "single", "--set", "batch_size=4", *common))
    assert r.exit_code == 0, r.output
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "-m", "sepcli", *tiny_args(data, tmp_path / "ddp", "--set", "batch_size=2", *common)]
    # no time limit asserted: a cold first run (fresh clone, no bytecode yet) is slow
    done = subprocess.run(cmd, env=env(), capture_output=True, timeout=300)
    err = done.stderr.decode()
    # Both ends of stderr: the launcher's summary is at the tail, the rank's own message at the head.
    assert done.returncode == 0, f"stdout: {done.stdout.decode()[-1500:]}\nstderr: {err[:3000]}\n...\n{err[-1500:]}"
    assert done.stdout.decode().count("Training finished") == 1  # rank 0 reports, rank 1 is silent
    single = torch.load(tmp_path / "single" / "last.pt", weights_only=True)
    ddp = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    assert ddp["world_size"] == 2 and ddp["global_step"] == single["global_step"] == 8
    # Same items per step (sharded), gradients averaged: the same training, up to rounding.
    for k in single["model"]:
        torch.testing.assert_close(ddp["model"][k], single["model"][k], atol=1e-5, rtol=1e-4)
    v1 = [json.loads(x) for x in (tmp_path / "single" / "log.jsonl").read_text().splitlines()]
    v2 = [json.loads(x) for x in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in v1] == [x["step"] for x in v2]  # one writer: no duplicated lines
    val1 = [x["val_si_snri"] for x in v1 if x["event"] == "valid"]
    val2 = [x["val_si_snri"] for x in v2 if x["event"] == "valid"]
    assert val2 == pytest.approx(val1, abs=0.05)  # sharded validation covers the whole set
    assert not [p for p in (tmp_path / "ddp").iterdir() if p.name.startswith(".")]

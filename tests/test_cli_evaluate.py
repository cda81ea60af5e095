"""`sep evaluate` through click's CliRunner: both modes, JSON/CSV, bad inputs."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from sepcli.cli import main
from tests.test_evaluate import N, expected_from_files, make_mixture, make_set, write


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, match: str) -> None:
    assert result.exit_code == 1, result.output
    # CliRunner reports an unhandled exception as exit 1 too; only a clean exit counts.
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1 and match in lines[0], result.stderr


def test_help_has_example():
    for flag in ("-h", "--help"):
        result = run("evaluate", flag)
        assert result.exit_code == 0
        assert "Example:" in result.output and "sep evaluate --refs" in result.output
        for opt in ("--refs", "--est", "--mix", "--set", "--est-dir", "--csv", "--json", "--force"):
            assert opt in result.output


def test_single_mixture_table(tmp_path):
    refs, ests, mix, _ = make_mixture(tmp_path)
    result = run("evaluate", "--refs", *refs, "--est", *ests, "--mix", mix)
    assert result.exit_code == 0, result.output
    out = result.stdout
    for word in ("SI-SNR", "SI-SNRi", "SDR", "SDRi", "mean", "Permutation: ref 1 <- est 2, ref 2 <- est 1"):
        assert word in out
    assert "8.00" in out and "14.00" in out and "11.00" in out  # per-speaker and mean SI-SNR


@pytest.mark.parametrize("order", [[0, 1], [1, 0]])
def test_single_mixture_json_matches_independent(tmp_path, order):
    refs, ests, mix, order = make_mixture(tmp_path, order=order)
    result = run("evaluate", "--refs", *refs, "--est", *ests, "--mix", mix, "--json")
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)
    inv, si, sii = expected_from_files(refs, ests, mix, order)
    assert d["perm"] == inv
    np.testing.assert_allclose([s["si_snr"] for s in d["per_source"]], si, atol=0.01)
    np.testing.assert_allclose([s["si_snri"] for s in d["per_source"]], sii, atol=0.01)
    assert d["si_snr"] == pytest.approx(np.mean(si), abs=0.01)


def test_whole_set_json_csv_and_missing(tmp_path):
    set_dir, est_dir, expected = make_set(tmp_path, ["m1", "m2", "m3", "m4"], missing=["m2"])
    csv_path = tmp_path / "out" / "scores.csv"
    result = run("evaluate", "--set", set_dir, "--est-dir", est_dir, "--json", "--csv", csv_path)
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)
    assert d["n"] == 3 and d["missing"] == 1 and d["missing_names"] == ["m2"]
    file_means = {n: np.mean(e["si_snr"]) for n, e in expected.items()}
    assert d["si_snr"] == pytest.approx(np.mean(list(file_means.values())), abs=0.01)
    for row in d["per_file"]:
        np.testing.assert_allclose(
            [s["si_snr"] for s in row["per_source"]], expected[row["name"]]["si_snr"], atol=0.01
        )
    for key in ("si_snri", "sdr", "sdri"):
        assert isinstance(d[key], float)
    assert "m2" in result.stderr and "1 of 4" in result.stderr  # reported, not silently skipped
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 4 and sum(r["status"] == "missing" for r in rows) == 1

    # The CSV is not overwritten without --force, and that is checked before any work.
    again = run("evaluate", "--set", set_dir, "--est-dir", est_dir, "--csv", csv_path)
    one_line_error(again, "exists")
    assert run("evaluate", "--set", set_dir, "--est-dir", est_dir, "--csv", csv_path, "--force").exit_code == 0


def test_whole_set_table_and_strict(tmp_path):
    set_dir, est_dir, _ = make_set(tmp_path, ["m1", "m2", "m3"], missing=["m3"])
    result = run("evaluate", "--set", set_dir, "--est-dir", est_dir)
    assert result.exit_code == 0, result.output
    for word in ("mean", "median", "10th pct", "SI-SNRi", "SDRi", "2 mixtures scored, 1 missing", "m3"):
        assert word in result.stdout
    strict = run("evaluate", "--set", set_dir, "--est-dir", est_dir, "--strict")
    assert "median" in strict.stdout  # results still shown
    one_line_error(strict, "1 mixture(s) have no estimates")


def test_bad_inputs_one_line_errors(tmp_path):
    refs, ests, mix, _ = make_mixture(tmp_path)
    (tmp_path / "text.wav").write_text("hello\n" * 50)
    (tmp_path / "empty.wav").write_bytes(b"")
    zero = write(tmp_path / "zero.wav", np.zeros(N))
    e = np.zeros(N, np.float32)
    e[5] = np.inf
    inf = write(tmp_path / "inf.wav", e)
    long = write(tmp_path / "long.wav", np.ones(N + 200) * 0.1)
    cases = [
        (["--refs", *refs, "--est", ests[0], tmp_path / "nope.wav"], "file not found"),
        (["--refs", *refs, "--est", ests[0], tmp_path / "text.wav"], "not a readable audio file"),
        (["--refs", *refs, "--est", ests[0], tmp_path / "empty.wav"], "empty"),
        (["--refs", refs[0], zero, "--est", *ests], "all zeros"),
        (["--refs", *refs, "--est", inf, ests[1]], "NaN or infinite"),
        (["--refs", *refs, "--est", ests[0]], "1 estimate(s) for 2 reference(s)"),
        (["--refs", *refs, "--est", ests[0], long], "more than 1%"),
        (["--set", tmp_path / "none", "--est-dir", tmp_path], "set folder not found"),
    ]
    for args, match in cases:
        one_line_error(run("evaluate", *args), match)


def test_usage_errors(tmp_path):
    refs, ests, _, _ = make_mixture(tmp_path)
    for args in (
        [],
        ["--refs", *refs],
        ["--set", tmp_path],
        ["--refs", *refs, "--est", *ests, "--set", tmp_path, "--est-dir", tmp_path],
    ):
        result = run("evaluate", *args)
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
        assert "Usage:" in result.stderr


def test_equals_form_of_many_value_option(tmp_path):
    refs, ests, _, _ = make_mixture(tmp_path)
    result = run("evaluate", f"--refs={refs[0]}", refs[1], f"--est={ests[0]}", ests[1], "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["perm"] == [1, 0]

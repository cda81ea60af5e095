"""`sep evaluate` library: single mixture and whole set, against an independent SI-SNR."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sepcli import evaluate
from sepcli.audio import read_audio, resample
from sepcli.errors import SepError
from tests.sigtools import noise_at_snr, si_snr_reference, speechlike

SR = 8000
N = 8000  # 1 s


def write(path: Path, x: np.ndarray, sample_rate: int = SR, subtype: str = "FLOAT") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.asarray(x, np.float32), sample_rate, subtype=subtype)
    return path


def make_mixture(folder: Path, n_src: int = 2, seed: int = 0, snrs=(8.0, 14.0), order=None):
    """refs s*.wav, mix.wav and estimates e*.wav (est j holds reference order[j])."""
    rng = np.random.default_rng(seed)
    ref = np.stack([speechlike(rng, N) for _ in range(n_src)])  # [S, T]
    mix = ref.sum(0)
    order = list(range(n_src))[::-1] if order is None else order
    est = [ref[k] + noise_at_snr(ref[k], snrs[k % len(snrs)], rng) for k in order]
    refs = [write(folder / f"s{i + 1}.wav", r) for i, r in enumerate(ref)]
    ests = [write(folder / f"e{j + 1}.wav", e) for j, e in enumerate(est)]
    return refs, ests, write(folder / "mix.wav", mix), order


def expected_from_files(refs, ests, mix, order):
    """Independent scores from the files as stored (float32), in reference order."""
    r = [read_audio(p)[0] for p in refs]
    e = [read_audio(p)[0] for p in ests]
    m = read_audio(mix)[0]
    inv = [order.index(i) for i in range(len(r))]  # estimate holding reference i
    si = [si_snr_reference(e[inv[i]], r[i]) for i in range(len(r))]
    sii = [si[i] - si_snr_reference(m, r[i]) for i in range(len(r))]
    return inv, si, sii


# ----------------------------------------------------------------------------- one mixture


@pytest.mark.parametrize("n_src, order", [(2, [1, 0]), (2, [0, 1]), (3, [2, 0, 1])])
def test_single_mixture_any_order_matches_independent_si_snr(tmp_path, n_src, order):
    refs, ests, mix, order = make_mixture(tmp_path, n_src, order=order, snrs=(8.0, 14.0, 3.0))
    score = evaluate.evaluate_files(refs, ests, mix)
    inv, si, sii = expected_from_files(refs, ests, mix, order)
    assert score.perm == inv
    np.testing.assert_allclose(score.si_snr, si, atol=0.01)
    np.testing.assert_allclose(score.si_snri, sii, atol=0.01)
    np.testing.assert_allclose(score.si_snr, [(8.0, 14.0, 3.0)[i] for i in range(n_src)], atol=0.01)
    assert len(score.sdr) == len(score.sdri) == n_src
    assert score.sample_rate == SR and score.notes == []
    d = score.to_dict()
    assert d["si_snr"] == pytest.approx(np.mean(si), abs=0.01)
    assert [s["est"] for s in d["per_source"]] == [str(ests[p]) for p in inv]
    json.dumps(d, allow_nan=False)


def test_without_mixture_no_improvements(tmp_path):
    refs, ests, _, _ = make_mixture(tmp_path)
    score = evaluate.evaluate_files(refs, ests)
    assert score.si_snri is None and score.sdri is None and score.mean("sdri") is None


def test_estimates_at_another_rate_are_resampled(tmp_path, sep_log):
    refs, ests, mix, order = make_mixture(tmp_path)
    # Band-limited errors only (white noise would lose its top band in the round trip).
    rng = np.random.default_rng(9)
    for p, k in zip(ests, order, strict=True):
        write(p, read_audio(refs[k])[0] + 0.05 * speechlike(rng, N))
    base = evaluate.evaluate_files(refs, ests, mix)
    hi = [write(tmp_path / f"hi{j}.wav", resample(read_audio(p)[0], SR, 16000), 16000) for j, p in enumerate(ests)]
    score = evaluate.evaluate_files(refs, hi, mix)
    np.testing.assert_allclose(score.si_snr, base.si_snr, atol=0.01)
    np.testing.assert_allclose(score.sdr, base.sdr, atol=0.05)
    assert any("resampled" in r.getMessage() for r in sep_log.records)


@pytest.mark.parametrize("delta", [40, -40, 80])  # 0.5% and 1% of 8000 samples
def test_small_length_difference_is_fixed_with_warning(tmp_path, sep_log, delta):
    refs, ests, mix, order = make_mixture(tmp_path)
    e = read_audio(ests[0])[0]
    e = np.concatenate([e, 0.01 * np.ones(delta)]) if delta > 0 else e[:delta]
    write(ests[0], e)
    score = evaluate.evaluate_files(refs, ests, mix)
    word = "trimmed" if delta > 0 else "zero-padded"
    assert any(word in r.getMessage() and r.levelname == "WARNING" for r in sep_log.records)
    assert len(score.notes) == 1
    # The trimmed estimate scores as the original; the padded one loses only the cut tail.
    if delta > 0:
        np.testing.assert_allclose(score.si_snr[1], 14.0, atol=0.01)  # e1 holds s2


@pytest.mark.parametrize("delta", [81, -81, 4000])
def test_length_difference_over_one_percent_is_an_error(tmp_path, delta):
    refs, ests, mix, _ = make_mixture(tmp_path)
    e = read_audio(ests[1])[0]
    write(ests[1], np.concatenate([e, np.zeros(delta)]) if delta > 0 else e[:delta])
    with pytest.raises(SepError, match="more than 1%"):
        evaluate.evaluate_files(refs, ests, mix)


def test_bad_inputs_raise_seperror(tmp_path):
    refs, ests, mix, _ = make_mixture(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "text.wav").write_text("not audio at all\n" * 10)
    (bad / "empty.wav").write_bytes(b"")
    write(bad / "zero.wav", np.zeros(N))
    nan = read_audio(ests[0])[0].copy()
    nan[100] = np.nan
    write(bad / "nan.wav", nan)
    cases = [
        ((refs, [ests[0], bad / "missing.wav"], mix), "not found"),
        ((refs, [bad / "text.wav", ests[1]], mix), "not a readable audio file"),
        ((refs, [ests[0], bad / "empty.wav"], mix), "empty"),
        (([refs[0], bad / "zero.wav"], ests, mix), "all zeros"),
        ((refs, [bad / "nan.wav", ests[1]], mix), "NaN"),
        ((refs, ests[:1], mix), "1 estimate.* for 2 reference"),
        ((refs, ests + [ests[0]], mix), "3 estimate.* for 2 reference"),
        ((refs, ests, bad / "zero.wav"), "mixture is all zeros"),
        (([], [], None), "no reference"),
    ]
    for args, match in cases:
        with pytest.raises(SepError, match=match):
            evaluate.evaluate_files(*args)


def test_references_at_different_rates_are_an_error(tmp_path):
    refs, ests, mix, _ = make_mixture(tmp_path)
    write(refs[1], resample(read_audio(refs[1])[0], SR, 16000), 16000)
    with pytest.raises(SepError, match="one sample rate"):
        evaluate.evaluate_files(refs, ests, mix)


def test_score_arrays_direct():
    rng = np.random.default_rng(3)
    ref = np.stack([speechlike(rng, N) for _ in range(2)])
    est = np.stack([ref[1] + noise_at_snr(ref[1], 5.0, rng), ref[0] + noise_at_snr(ref[0], 9.0, rng)])
    score = evaluate.score_arrays(est, ref, ref.sum(0))
    assert score.perm == [1, 0]
    np.testing.assert_allclose(score.si_snr, [9.0, 5.0], atol=0.01)


# ----------------------------------------------------------------------------- whole set


def make_set(root: Path, names, n_src=2, missing=(), partial=(), est_rate=SR, mix_folder="mix"):
    """Libri2Mix-style set plus estimates in shuffled order; returns expected per-file SI-SNR."""
    expected = {}
    for k, name in enumerate(names):
        rng = np.random.default_rng(100 + k)
        ref = np.stack([speechlike(rng, N) for _ in range(n_src)])
        for i in range(n_src):
            write(root / "set" / f"s{i + 1}" / f"{name}.wav", ref[i], subtype="PCM_16")
        write(root / "set" / mix_folder / f"{name}.wav", ref.sum(0) / 2, subtype="PCM_16")
        if name in missing:
            continue
        order = list(rng.permutation(n_src))
        snrs = rng.uniform(0, 20, n_src)
        for j, src in enumerate(order):
            if name in partial and j == n_src - 1:
                continue
            e = ref[src] + noise_at_snr(ref[src], snrs[src], rng)
            if est_rate != SR:
                e = resample(e, SR, est_rate)
            write(root / "est" / name / f"s{j + 1}.wav", e, est_rate)
        if name in partial:
            continue
        r = [read_audio(root / "set" / f"s{i + 1}" / f"{name}.wav")[0] for i in range(n_src)]
        m = read_audio(root / "set" / mix_folder / f"{name}.wav")[0]
        ests = [read_audio(root / "est" / name / f"s{j + 1}.wav", SR)[0] for j in range(n_src)]
        inv = [order.index(i) for i in range(n_src)]
        si = [si_snr_reference(ests[inv[i]], r[i]) for i in range(n_src)]
        expected[name] = {
            "perm": inv,
            "si_snr": si,
            "si_snri": [si[i] - si_snr_reference(m, r[i]) for i in range(n_src)],
        }
    return root / "set", root / "est", expected


def test_whole_set_matches_independent_si_snr(tmp_path):
    names = ["a01", "b02", "c03", "d04", "e05"]
    set_dir, est_dir, expected = make_set(tmp_path, names, missing=["c03"])
    calls = []
    result = evaluate.evaluate_set(set_dir, est_dir, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(i, 5) for i in range(1, 6)]
    assert result.n == 4 and result.missing == ["c03"]
    by_name = {s.name: s for s in result.scores}
    assert sorted(by_name) == sorted(expected)
    for name, want in expected.items():
        got = by_name[name]
        assert got.perm == want["perm"]
        np.testing.assert_allclose(got.si_snr, want["si_snr"], atol=0.01)
        np.testing.assert_allclose(got.si_snri, want["si_snri"], atol=0.01)
    file_means = [np.mean(expected[n]["si_snr"]) for n in sorted(expected)]
    st = result.stats["si_snr"]
    assert st.mean == pytest.approx(np.mean(file_means), abs=0.01)
    assert st.median == pytest.approx(np.median(file_means), abs=0.01)
    assert st.p10 == pytest.approx(np.percentile(file_means, 10), abs=0.01)
    d = result.to_dict()
    assert {"n", "missing", "si_snr", "si_snri", "sdr", "sdri", "per_file"} <= set(d)
    assert d["n"] == 4 and d["missing"] == 1 and d["missing_names"] == ["c03"]
    assert d["si_snri"] == pytest.approx(np.mean([np.mean(e["si_snri"]) for e in expected.values()]), abs=0.01)
    json.dumps(d, allow_nan=False)


def test_whole_set_three_speakers_resampled_partial_and_mix_clean(tmp_path, sep_log):
    set_dir, est_dir, expected = make_set(
        tmp_path, ["x1", "x2", "x3"], n_src=3, partial=["x2"], est_rate=16000, mix_folder="mix_clean"
    )
    result = evaluate.evaluate_set(set_dir, est_dir)
    assert result.missing == ["x2"] and result.n == 2
    for s in result.scores:
        np.testing.assert_allclose(s.si_snr, expected[s.name]["si_snr"], atol=0.01)
    assert any("1 of 3 mixtures" in r.getMessage() for r in sep_log.records)


def test_set_errors(tmp_path):
    set_dir, est_dir, _ = make_set(tmp_path, ["a", "b"])
    with pytest.raises(SepError, match="estimates folder not found"):
        evaluate.evaluate_set(set_dir, tmp_path / "nope")
    with pytest.raises(SepError, match="set folder not found"):
        evaluate.evaluate_set(tmp_path / "nope", est_dir)
    empty = tmp_path / "empty_est"
    empty.mkdir()
    with pytest.raises(SepError, match="no estimates found"):
        evaluate.evaluate_set(set_dir, empty)
    write(est_dir / "a" / "s3.wav", np.ones(N) * 0.1)
    with pytest.raises(SepError, match="3 estimates for 2 references"):
        evaluate.evaluate_set(set_dir, est_dir)
    (est_dir / "a" / "s3.wav").unlink()
    (set_dir / "s2" / "b.wav").unlink()
    with pytest.raises(SepError, match="reference missing"):
        evaluate.evaluate_set(set_dir, est_dir)
    (set_dir / "mix").rename(set_dir / "mixture")
    with pytest.raises(SepError, match="no mixture folder"):
        evaluate.evaluate_set(set_dir, est_dir)


def test_csv_rows_and_atomic_no_overwrite(tmp_path):
    set_dir, est_dir, expected = make_set(tmp_path, ["a", "b", "c"], missing=["b"])
    result = evaluate.evaluate_set(set_dir, est_dir)
    out = evaluate.write_csv(tmp_path / "scores.csv", result.scores, result.missing)
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["name"] for r in rows] == ["a", "c", "b"]
    assert [r["status"] for r in rows] == ["ok", "ok", "missing"]
    for r in rows[:2]:
        want = expected[r["name"]]
        assert float(r["si_snr"]) == pytest.approx(np.mean(want["si_snr"]), abs=0.01)
        assert float(r["si_snr_s2"]) == pytest.approx(want["si_snr"][1], abs=0.01)
        assert r["perm"] == " ".join(map(str, want["perm"]))
    assert rows[2]["si_snr"] == ""
    with pytest.raises(SepError, match="exists"):
        evaluate.write_csv(out, result.scores)
    evaluate.write_csv(out, result.scores[:1], force=True)
    assert len(list(csv.DictReader(io.StringIO(out.read_text())))) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

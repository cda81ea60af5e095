"""Tests for sepcli.training.data and .corpus: corpus discovery, dynamic mixing, mixture sets, sep mix."""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sepcli.training.corpus import Corpus, find_speakers, load_split, select_split
from sepcli.training.data import DynamicMixDataset, MixingConfig, MixtureSetDataset, build_mixture_set, make_mixture
from sepcli.errors import SepError

SR = 8000


def tone_freq(speaker_index: int) -> float:
    """Each synthetic speaker is a tone at its own frequency (well apart, below 4 kHz)."""
    return 300.0 + 250.0 * speaker_index


def make_corpus(
    root: Path,
    n_speakers: int = 5,
    n_utts: int = 3,
    sample_rate: int = SR,
    seconds: tuple[float, float] = (0.6, 1.4),
    seed: int = 0,
) -> Path:
    """Speaker folders (nested two levels down, like librispeech-8k/SUBSET/SPEAKER)
    of short FLAC files: speaker k is a steady tone at tone_freq(k) plus a little noise."""
    rng = np.random.default_rng(seed)
    for k in range(n_speakers):
        sub = "subset-a" if k % 2 == 0 else "subset-b"
        d = root / sub / f"spk{k}"
        d.mkdir(parents=True, exist_ok=True)
        for u in range(n_utts):
            n = int(sample_rate * rng.uniform(*seconds))
            t = np.arange(n) / sample_rate
            x = 0.3 * np.sin(2 * np.pi * tone_freq(k) * t + rng.uniform(0, 6)) + 0.01 * rng.standard_normal(n)
            sf.write(d / f"spk{k}-{u}.flac", x.astype(np.float32), sample_rate)
    return root


def dominant_freq(x: np.ndarray, sample_rate: int = SR) -> float:
    spec = np.abs(np.fft.rfft(x))
    return float(np.fft.rfftfreq(len(x), 1 / sample_rate)[spec.argmax()])


# ----------------------------------------------------------------------------- discovery


def test_find_speakers_at_any_depth_and_by_glob(tmp_path):
    make_corpus(tmp_path / "c", n_speakers=4, n_utts=2)
    found = find_speakers(tmp_path / "c")
    assert sorted(found) == ["spk0", "spk1", "spk2", "spk3"]
    assert all(len(v) == 2 for v in found.values())
    only_a = find_speakers(str(tmp_path / "c" / "subset-a" / "*"))
    assert sorted(only_a) == ["spk0", "spk2"]


def test_same_speaker_folder_in_two_subsets_is_one_speaker(tmp_path):
    make_corpus(tmp_path / "c", n_speakers=2, n_utts=1)
    (tmp_path / "c" / "subset-b" / "spk0").mkdir()
    src = next((tmp_path / "c" / "subset-a" / "spk0").iterdir())
    (tmp_path / "c" / "subset-b" / "spk0" / "extra.flac").write_bytes(src.read_bytes())
    found = find_speakers(tmp_path / "c")
    assert len(found["spk0"]) == 2


def test_empty_folder_and_no_match_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SepError, match="no audio files"):
        find_speakers(tmp_path / "empty")
    with pytest.raises(SepError, match="not found"):
        find_speakers(tmp_path / "missing")
    with pytest.raises(SepError, match="match"):
        find_speakers(str(tmp_path / "nothing-*"))


def test_unreadable_and_silent_files_are_skipped_with_warning(tmp_path, caplog):
    make_corpus(tmp_path / "c", n_speakers=3, n_utts=2)
    bad = tmp_path / "c" / "subset-a" / "spk0" / "broken.flac"
    bad.write_bytes(b"not audio at all")
    sf.write(tmp_path / "c" / "subset-a" / "spk0" / "quiet.wav", np.zeros(4000, np.float32), SR)
    with caplog.at_level(logging.WARNING, logger="sepcli"):
        corpus = Corpus(find_speakers(tmp_path / "c"), SR)
    assert corpus.skipped == 2
    assert "broken.flac" in caplog.text and "quiet.wav" in caplog.text
    assert len(corpus.utterances) == 6


def test_corpus_of_only_bad_files_or_one_speaker_is_an_error(tmp_path):
    d = tmp_path / "c" / "spk0"
    d.mkdir(parents=True)
    (d / "a.flac").write_bytes(b"garbage")
    with pytest.raises(SepError, match="no usable audio"):
        Corpus(find_speakers(tmp_path / "c"), SR)
    make_corpus(tmp_path / "one", n_speakers=1)
    with pytest.raises(SepError, match="distinct speakers"):
        Corpus(find_speakers(tmp_path / "one"), SR)


def test_corpus_resamples_to_requested_rate(tmp_path):
    make_corpus(tmp_path / "c", n_speakers=2, n_utts=1, sample_rate=16000, seconds=(1.0, 1.0))
    corpus = Corpus(find_speakers(tmp_path / "c"), SR)
    assert corpus.sample_rate == SR
    assert all(abs(len(u.audio) - SR) <= 1 for u in corpus.utterances)
    # a 16 kHz file of speaker 1 keeps its tone at the new rate
    assert dominant_freq(corpus.audio(1)) == pytest.approx(tone_freq(1), abs=2)


# ----------------------------------------------------------------------------- splits


def test_split_selection(tmp_path):
    make_corpus(tmp_path / "c", n_speakers=5, n_utts=1)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"_comment": "x", "valid": ["spk1"], "test": ["spk3", "spk9"]}))
    found = find_speakers(tmp_path / "c")
    assert sorted(select_split(found, split, "train")) == ["spk0", "spk2", "spk4"]
    assert sorted(select_split(found, split, "valid")) == ["spk1"]
    assert sorted(select_split(found, split, "test")) == ["spk3"]  # spk9 absent: warning only
    with pytest.raises(SepError, match="not in"):
        select_split(found, split, "dev")
    with pytest.raises(SepError, match="needs a speaker split"):
        select_split(found, None, "valid")


def test_bad_split_files(tmp_path):
    p = tmp_path / "s.json"
    p.write_text(json.dumps({"valid": ["a"], "test": ["a"]}))
    with pytest.raises(SepError, match="both"):
        load_split(p)
    p.write_text("{not json")
    with pytest.raises(SepError, match="JSON"):
        load_split(p)
    with pytest.raises(SepError, match="not found"):
        load_split(tmp_path / "missing.json")


# ----------------------------------------------------------------------------- dynamic mixing


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    root = make_corpus(tmp_path_factory.mktemp("corpus"), n_speakers=4, n_utts=4)
    # One speaker with most of the audio: a mixer that ignored speaker identity
    # would pair it with itself often.
    d = root / "subset-a" / "spk0"
    rng = np.random.default_rng(1)
    for u in range(20):
        t = np.arange(SR) / SR
        x = 0.3 * np.sin(2 * np.pi * tone_freq(0) * t) + 0.01 * rng.standard_normal(SR)
        sf.write(d / f"more-{u}.flac", x.astype(np.float32), SR)
    return Corpus(find_speakers(root), SR)


def test_dynamic_mixing_never_pairs_a_speaker_with_itself(corpus):
    ds = DynamicMixDataset(corpus, MixingConfig(n_src=2, segment=0.5), epoch_size=300, seed=3)
    for i in range(300):
        _, _, info = ds.mixture(i)
        assert info.speakers[0] != info.speakers[1]
    ds3 = DynamicMixDataset(corpus, MixingConfig(n_src=3, segment=0.5), epoch_size=100, seed=3)
    for i in range(100):
        assert len(set(ds3.mixture(i)[2].speakers)) == 3


def test_each_reference_is_its_speakers_audio(corpus):
    ds = DynamicMixDataset(corpus, MixingConfig(n_src=2, segment=0.5), epoch_size=40, seed=0)
    for i in range(40):
        mix, ref, info = ds.mixture(i)
        for k in range(2):
            want = tone_freq(int(info.speakers[k][3:]))
            assert dominant_freq(ref[k]) == pytest.approx(want, abs=20)
        np.testing.assert_allclose(mix, ref.sum(0), atol=1e-6)


def test_random_polarity_flips_whole_sources_and_nothing_else(corpus):
    plain = DynamicMixDataset(corpus, MixingConfig(n_src=2, segment=0.5), epoch_size=60, seed=5)
    flip = DynamicMixDataset(corpus, MixingConfig(n_src=2, segment=0.5, random_polarity=True), epoch_size=60, seed=5)
    signs = []
    for i in range(60):
        m0, r0, i0 = plain.mixture(i)
        m1, r1, i1 = flip.mixture(i)
        assert i0.utterances == i1.utterances and i0.offsets == i1.offsets  # the flip is drawn last
        assert np.diff(i0.gains_db) == pytest.approx(np.diff(i1.gains_db))  # relative levels kept
        s = np.sign(np.sum(r1 * r0, axis=1))  # [S]
        # each row is +-1 times the unflipped one, up to the level (the mixture's RMS changed)
        k = np.sum(r1 * (s[:, None] * r0)) / np.sum(r0 * r0)
        np.testing.assert_allclose(r1, k * s[:, None] * r0, atol=1e-6)
        if (s == 1).all():
            np.testing.assert_array_equal(r1, r0)
        np.testing.assert_allclose(m1, r1.sum(0), atol=1e-6)
        signs.append(s)
    signs = np.array(signs)  # [60, S]
    assert ((signs == -1).mean(axis=0) > 0.25).all() and ((signs == 1).mean(axis=0) > 0.25).all()


def test_dynamic_mixing_is_reproducible_and_varies_by_epoch(corpus):
    cfg = MixingConfig(n_src=2, segment=0.5, speed_range=(0.9, 1.1))
    a = DynamicMixDataset(corpus, cfg, epoch_size=10, seed=7)
    b = DynamicMixDataset(corpus, cfg, epoch_size=10, seed=7)
    for i in (0, 3, 9):
        ma, ra = a[i]
        mb, rb = b[i]
        assert ma.shape == (4000,) and ra.shape == (2, 4000)
        assert np.array_equal(ma.numpy(), mb.numpy()) and np.array_equal(ra.numpy(), rb.numpy())
    b.set_epoch(1)
    assert not np.array_equal(a[0][0].numpy(), b[0][0].numpy())
    c = DynamicMixDataset(corpus, cfg, epoch_size=10, seed=8)
    assert not np.array_equal(a[0][0].numpy(), c[0][0].numpy())


def test_relative_level_follows_snr_range(corpus):
    # Steady tones, long enough that no source is padded: the measured level
    # difference of the references is the drawn one.
    cfg = MixingConfig(n_src=2, segment=0.5, snr_range=(0.0, 5.0))
    ds = DynamicMixDataset(corpus, cfg, epoch_size=200, seed=1)
    diffs = []
    for i in range(200):
        _, ref, info = ds.mixture(i)
        if any(p != 0 for p in info.pads):
            continue
        rms = np.sqrt(np.mean(ref**2, axis=1))
        measured = abs(20 * np.log10(rms[0] / rms[1]))
        drawn = abs(info.gains_db[0] - info.gains_db[1])
        assert measured == pytest.approx(drawn, abs=0.3)
        diffs.append(drawn)
    assert len(diffs) > 50
    assert 0.0 <= min(diffs) and max(diffs) <= 5.0
    assert max(diffs) > 3.5 and min(diffs) < 1.5  # the whole range is used


def test_speed_perturbation_moves_the_tone(corpus):
    cfg = MixingConfig(n_src=2, segment=0.5, speed_range=(1.2, 1.2))
    ds = DynamicMixDataset(corpus, cfg, epoch_size=5, seed=0)
    _, ref, info = ds.mixture(0)
    want = tone_freq(int(info.speakers[0][3:])) * 1.2
    assert dominant_freq(ref[0]) == pytest.approx(want, abs=25)


def test_short_utterances_are_padded_to_the_segment(corpus):
    ds = DynamicMixDataset(corpus, MixingConfig(n_src=2, segment=3.0), epoch_size=5, seed=0)
    mix, ref, info = ds.mixture(0)
    assert mix.shape == (3 * SR,)
    assert all(np.count_nonzero(ref[k]) < 3 * SR for k in range(2))  # zeros around each utterance
    assert np.abs(mix).max() <= 0.9 + 1e-6


def test_whole_utterance_modes(corpus):
    rng = np.random.default_rng(0)
    mix, ref, info = make_mixture(corpus, rng, MixingConfig(n_src=2, segment=None, mode="min"))
    lens = [int(corpus.lengths[u]) for u in info.utterances]
    assert len(mix) == min(lens)
    rng = np.random.default_rng(0)
    mix, ref, info = make_mixture(corpus, rng, MixingConfig(n_src=2, segment=None, mode="max"))
    assert len(mix) == max(lens)


def test_bad_mixing_settings():
    with pytest.raises(SepError, match="mode"):
        MixingConfig(mode="mean")
    with pytest.raises(SepError, match="snr_range"):
        MixingConfig(snr_range=(5.0, 0.0))


# ----------------------------------------------------------------------------- mixture sets


def write_set(root: Path, n: int = 3, n_src: int = 2, sample_rate: int = SR, seconds: float = 0.5) -> Path:
    rng = np.random.default_rng(0)
    length = int(seconds * sample_rate)
    for i in range(n):
        srcs = [0.1 * rng.standard_normal(length).astype(np.float32) for _ in range(n_src)]
        for k, s in enumerate(srcs):
            (root / f"s{k + 1}").mkdir(parents=True, exist_ok=True)
            sf.write(root / f"s{k + 1}" / f"m{i}.wav", s, sample_rate)
        (root / "mix").mkdir(parents=True, exist_ok=True)
        sf.write(root / "mix" / f"m{i}.wav", np.sum(srcs, 0), sample_rate)
    return root


def test_mixture_set_reads_and_resamples(tmp_path):
    write_set(tmp_path / "set", n=2, sample_rate=16000, seconds=0.5)
    ds = MixtureSetDataset(tmp_path / "set", SR)
    assert len(ds) == 2
    mix, ref = ds[0]
    assert mix.shape == (4000,) and ref.shape == (2, 4000)
    np.testing.assert_allclose(mix.numpy(), ref.sum(0).numpy(), atol=1e-3)


def test_mixture_set_crops_segments_reproducibly(tmp_path):
    write_set(tmp_path / "set", n=2, seconds=1.0)
    a = MixtureSetDataset(tmp_path / "set", SR, segment=0.25, seed=1)
    b = MixtureSetDataset(tmp_path / "set", SR, segment=0.25, seed=1)
    assert a[1][0].shape == (2000,)
    assert np.array_equal(a[1][0].numpy(), b[1][0].numpy())
    b.set_epoch(1)
    assert not np.array_equal(a[1][0].numpy(), b[1][0].numpy())


def test_mixture_set_skips_mismatched_and_incomplete_mixtures(tmp_path, caplog):
    root = write_set(tmp_path / "set", n=3)
    sf.write(root / "s2" / "m1.wav", np.zeros(1000, np.float32) + 0.1, SR)  # 0.125 s vs 0.5 s
    (root / "s1" / "m2.wav").unlink()
    with caplog.at_level(logging.WARNING, logger="sepcli"):
        ds = MixtureSetDataset(root, SR)
    assert len(ds) == 1 and ds.items[0][0].stem == "m0"
    assert "m1" in caplog.text and "differ in length" in caplog.text
    assert "m2" in caplog.text and "no source file" in caplog.text


def test_mixture_set_errors(tmp_path):
    root = write_set(tmp_path / "set", n=1)
    sf.write(root / "s2" / "m0.wav", np.zeros(100, np.float32), SR)
    with pytest.raises(SepError, match="no usable mixture"):
        MixtureSetDataset(root, SR)
    with pytest.raises(SepError, match="not a mixture set"):
        MixtureSetDataset(tmp_path, SR)
    three = write_set(tmp_path / "three", n=1, n_src=3)
    with pytest.raises(SepError, match="separates 2"):
        MixtureSetDataset(three, SR, n_src=2)
    assert MixtureSetDataset(three, SR)[0][1].shape[0] == 3


def test_mixture_set_min_max_reconcile_small_differences(tmp_path):
    root = write_set(tmp_path / "set", n=1, seconds=0.5)
    sf.write(root / "s1" / "m0.wav", 0.1 * np.ones(3990, np.float32), SR)  # 10 samples short
    assert MixtureSetDataset(root, SR, mode="min")[0][0].shape == (3990,)
    mix, ref = MixtureSetDataset(root, SR, mode="max")[0]
    assert mix.shape == (4000,) and float(ref[0, -10:].abs().sum()) == 0.0


# ----------------------------------------------------------------------------- sep mix


def _read_meta(path: Path) -> list[dict]:
    with open(path / "metadata.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_build_mixture_set_layout_and_metadata(tmp_path):
    make_corpus(tmp_path / "c", n_speakers=4)
    s = build_mixture_set(tmp_path / "c", tmp_path / "out", 5, segment=0.5, seed=0)
    assert s.n_mixtures == 5 and s.sample_rate == SR
    rows = _read_meta(tmp_path / "out")
    assert len(rows) == 5
    for row in rows:
        mix, _ = sf.read(tmp_path / "out" / row["mixture_path"])
        s1, _ = sf.read(tmp_path / "out" / row["source_1_path"])
        s2, _ = sf.read(tmp_path / "out" / row["source_2_path"])
        assert len(mix) == int(row["length"]) == 4000
        np.testing.assert_allclose(mix, s1 + s2, atol=2 / 32768)  # PCM16 rounding only
        assert row["source_1_speaker"] != row["source_2_speaker"]
        assert Path(row["source_1_file"]).parent.name == row["source_1_speaker"]
        assert dominant_freq(s1) == pytest.approx(tone_freq(int(row["source_1_speaker"][3:])), abs=20)
        rms_db = 20 * np.log10(np.sqrt(np.mean(s1**2)) / np.sqrt(np.mean(s2**2)))
        gain_diff = float(row["source_1_gain_db"]) - float(row["source_2_gain_db"])
        if row["source_1_pad"] == row["source_2_pad"] == "0":
            assert rms_db == pytest.approx(gain_diff, abs=0.5)
    # the set reads back as a training/validation set
    assert len(MixtureSetDataset(tmp_path / "out", SR)) == 5


def test_build_mixture_set_is_deterministic(tmp_path):
    make_corpus(tmp_path / "c", n_speakers=4)
    build_mixture_set(tmp_path / "c", tmp_path / "a", 4, seed=5)
    build_mixture_set(tmp_path / "c", tmp_path / "b", 4, seed=5)
    build_mixture_set(tmp_path / "c", tmp_path / "d", 4, seed=6)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 4 * 3 + 1
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert (tmp_path / "a" / "mix" / "0000.wav").read_bytes() != (tmp_path / "d" / "mix" / "0000.wav").read_bytes()


def test_build_mixture_set_speaker_disjoint_splits(tmp_path):
    make_corpus(tmp_path / "c", n_speakers=7)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"valid": ["spk1", "spk4"], "test": ["spk2", "spk6"]}))
    used = {}
    for name in ("train", "valid", "test"):
        build_mixture_set(tmp_path / "c", tmp_path / name, 30, speakers_split=split, split=name, seed=0)
        rows = _read_meta(tmp_path / name)
        used[name] = {r[f"source_{k}_speaker"] for r in rows for k in (1, 2)}
    assert used["valid"] == {"spk1", "spk4"} and used["test"] == {"spk2", "spk6"}
    assert used["train"] <= {"spk0", "spk3", "spk5"}
    assert not (used["train"] & used["valid"]) and not (used["train"] & used["test"])


def test_build_mixture_set_three_speakers_max_mode(tmp_path):
    make_corpus(tmp_path / "c", n_speakers=4)
    build_mixture_set(tmp_path / "c", tmp_path / "o", 3, n_src=3, mode="max", seed=0)
    assert (tmp_path / "o" / "s3").is_dir()
    for row in _read_meta(tmp_path / "o"):
        lengths = [sf.info(row[f"source_{k}_file"]).frames for k in (1, 2, 3)]
        assert int(row["length"]) == max(lengths)


def test_build_mixture_set_never_overwrites_without_force(tmp_path):
    make_corpus(tmp_path / "c", n_speakers=3)
    build_mixture_set(tmp_path / "c", tmp_path / "o", 2, seed=0)
    before = (tmp_path / "o" / "mix" / "0000.wav").read_bytes()
    with pytest.raises(SepError, match="--force"):
        build_mixture_set(tmp_path / "c", tmp_path / "o", 2, seed=1)
    assert (tmp_path / "o" / "mix" / "0000.wav").read_bytes() == before
    build_mixture_set(tmp_path / "c", tmp_path / "o", 2, seed=1, force=True)
    assert (tmp_path / "o" / "mix" / "0000.wav").read_bytes() != before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left
    other = tmp_path / "precious"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(SepError, match="not a mixture set"):
        build_mixture_set(tmp_path / "c", other, 2, force=True)
    assert (other / "notes.txt").read_text() == "keep me"


def test_mixed_speaker_counts_pad_silent_references(corpus):
    cfg = MixingConfig(n_src=3, segment=0.5, n_active=(2, 3))
    ds = DynamicMixDataset(corpus, cfg, epoch_size=60, seed=4)
    seen = set()
    for i in range(60):
        mix, ref, info = ds.mixture(i)
        talking = int((np.abs(ref).max(axis=1) > 0).sum())
        assert ref.shape == (3, 4000) and talking == len(info.speakers) == len(set(info.speakers))
        assert not ref[talking:].any()  # the silent rows come last and are exactly zero
        np.testing.assert_allclose(mix, ref.sum(0), atol=1e-6)
        seen.add(talking)
    assert seen == {2, 3}
    for bad in [(), (0, 2), (2, 4), (2.0,), (True,)]:
        with pytest.raises(SepError, match="n_active"):
            MixingConfig(n_src=3, n_active=bad)

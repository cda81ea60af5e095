"""Audio I/O: formats, downmix, resampling, atomic writes, streaming."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import soundfile as sf
import soxr

from sepcli import audio
from sepcli.audio import (
    AudioWriter,
    BlockReader,
    audio_info,
    read_audio,
    resample,
    resampled_length,
    write_audio,
)
from sepcli.errors import SepError
from tests.sigtools import speechlike

RNG = np.random.default_rng(1234)


def tone(n: int, sample_rate: int, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / sample_rate)).astype(np.float32)


def leftover_temps(folder) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------- reading


@pytest.mark.parametrize(
    "subtype, atol",
    [("PCM_16", 1 / 32768), ("PCM_24", 1 / 2**23), ("PCM_32", 1 / 2**31), ("FLOAT", 0), ("DOUBLE", 0)],
)
def test_wav_subtypes_round_trip(tmp_path, subtype, atol):
    x = speechlike(RNG, 4000).astype(np.float32)
    p = tmp_path / "x.wav"
    sf.write(p, x, 11025, subtype=subtype)
    y, rate = read_audio(p)
    assert rate == 11025 and y.dtype == np.float32 and y.shape == (4000,)
    np.testing.assert_allclose(y, x, atol=atol + 1e-7)
    info = audio_info(p)
    assert (info.sample_rate, info.frames, info.channels, info.format, info.subtype) == (
        11025, 4000, 1, "WAV", subtype,
    )
    assert info.duration == pytest.approx(4000 / 11025)


def test_flac_is_lossless(tmp_path):
    x = np.round(speechlike(RNG, 5000) * 32767) / 32768
    p = tmp_path / "x.flac"
    sf.write(p, x, 16000, subtype="PCM_16")
    y, rate = read_audio(p)
    assert rate == 16000
    np.testing.assert_array_equal(y, x.astype(np.float32))


@pytest.mark.parametrize("fmt, subtype, ext", [("OGG", "VORBIS", "ogg"), ("MP3", "MPEG_LAYER_III", "mp3")])
def test_lossy_formats_decode_to_the_same_sound(tmp_path, fmt, subtype, ext):
    sr = 16000
    x = tone(sr, sr, 440.0)  # 1 s
    p = tmp_path / f"x.{ext}"
    sf.write(p, x, sr, format=fmt, subtype=subtype)
    y, rate = read_audio(p)
    assert rate == sr
    assert abs(len(y) - len(x)) < 0.1 * sr
    # Same loudness and the energy sits at 440 Hz, not elsewhere.
    mid = y[2000:12000]
    assert np.sqrt(np.mean(mid**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.1)
    spec = np.abs(np.fft.rfft(mid))
    assert np.argmax(spec) * sr / len(mid) == pytest.approx(440, abs=3)


def test_multichannel_is_averaged_and_logged_once(tmp_path, sep_log):
    left, right = tone(3000, 8000, 300), tone(3000, 8000, 700, 0.25)
    p = tmp_path / "stereo.wav"
    sf.write(p, np.stack([left, right], axis=1), 8000, subtype="FLOAT")
    y, _ = read_audio(p)
    np.testing.assert_allclose(y, (left + right) / 2, atol=1e-7)
    msgs = [r.getMessage() for r in sep_log.records if "downmixed" in r.getMessage()]
    assert len(msgs) == 1 and "2 channels" in msgs[0]


def test_read_with_rate_equals_resample_of_read(tmp_path):
    x = speechlike(RNG, 16000, 16000).astype(np.float32)
    p = tmp_path / "x.wav"
    sf.write(p, x, 16000, subtype="FLOAT")
    y, rate = read_audio(p, 8000)
    assert rate == 8000 and y.dtype == np.float32
    np.testing.assert_array_equal(y, resample(x, 16000, 8000))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: None, "not found"),
        (lambda p: p.write_text("hello, I am text\n" * 20), "not a readable audio file"),
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: sf.write(p, np.zeros(0, np.float32), 8000), "empty"),
        (lambda p: sf.write(p, np.array([0.1, np.nan, 0.2], np.float32), 8000, subtype="FLOAT"), "NaN"),
        (lambda p: sf.write(p, np.array([0.1, 0.3, np.inf], np.float32), 8000, subtype="FLOAT"), "infinite"),
        (lambda p: p.mkdir(), "not a file"),
    ],
    ids=["missing", "text", "zero-bytes", "no-samples", "nan", "inf", "folder"],
)
def test_bad_files_raise_seperror(tmp_path, make, match):
    p = tmp_path / "bad.wav"
    make(p)
    with pytest.raises(SepError, match=match):
        read_audio(p)
    with pytest.raises(SepError):
        list(BlockReader(p))


def test_bad_sample_rate_argument(tmp_path):
    p = tmp_path / "x.wav"
    sf.write(p, tone(800, 8000), 8000)
    for bad in (0, -8000, 8000.5, "8k"):
        with pytest.raises(SepError, match="positive integer"):
            read_audio(p, bad)


# ----------------------------------------------------------------------------- resampling


def test_resample_tone_matches_analytic_tone():
    x = tone(16000, 16000, 440.0)
    y = resample(x, 16000, 8000)
    assert y.shape == (8000,) and y.dtype == np.float32
    expected = tone(8000, 8000, 440.0)
    # Away from the edges (filter transients) the result is the same tone.
    assert np.max(np.abs(y[200:-200] - expected[200:-200])) < 1e-3


@pytest.mark.parametrize("n", [1, 2, 999, 16001, 22051])
@pytest.mark.parametrize("rates", [(16000, 8000), (8000, 16000), (44100, 8000), (22050, 16000)])
def test_resampled_length_matches_soxr(n, rates):
    sr_in, sr_out = rates
    y = resample(np.zeros(n, np.float32), sr_in, sr_out)
    assert y.shape[0] == resampled_length(n, sr_in, sr_out) == len(soxr.resample(np.zeros(n), sr_in, sr_out))


def test_resample_channels_independently_and_same_rate_is_identity():
    x = np.stack([tone(4000, 16000, 300), tone(4000, 16000, 900)])  # [2, T]
    y = resample(x, 16000, 8000)
    assert y.shape == (2, 2000)
    for c in range(2):
        np.testing.assert_allclose(y[c], resample(x[c], 16000, 8000), atol=1e-6)
    assert resample(x, 8000, 8000) is x


# ----------------------------------------------------------------------------- writing


@pytest.mark.parametrize("subtype, atol", [("PCM_16", 1 / 32768), ("PCM_24", 1 / 2**23), ("FLOAT", 0)])
def test_write_audio_round_trip(tmp_path, subtype, atol):
    x = speechlike(RNG, 3000).astype(np.float32)
    p = write_audio(tmp_path / "sub" / "x.wav", x, 8000, subtype=subtype)
    assert p == tmp_path / "sub" / "x.wav"
    assert sf.info(p).subtype == subtype and sf.info(p).format == "WAV"
    y, rate = read_audio(p)
    assert rate == 8000
    np.testing.assert_allclose(y, x, atol=atol + 1e-7)
    assert leftover_temps(p.parent) == []


def test_write_audio_default_is_pcm16_and_multichannel(tmp_path):
    x = np.stack([tone(1000, 8000, 300), tone(1000, 8000, 500)])  # [C, T]
    p = write_audio(tmp_path / "st.wav", x, 8000)
    data, _ = sf.read(p, always_2d=True)
    assert sf.info(p).subtype == "PCM_16" and data.shape == (1000, 2)
    np.testing.assert_allclose(data.T, x, atol=1 / 32768)


def test_write_audio_file_mode_follows_umask(tmp_path):
    p = write_audio(tmp_path / "x.wav", tone(100, 8000), 8000)
    assert stat.S_IMODE(os.stat(p).st_mode) == audio.NEW_FILE_MODE


def test_write_audio_refuses_to_overwrite_without_force(tmp_path):
    p = write_audio(tmp_path / "x.wav", tone(800, 8000, 300), 8000)
    before = p.read_bytes()
    with pytest.raises(SepError, match="exists"):
        write_audio(p, tone(800, 8000, 600), 8000)
    assert p.read_bytes() == before
    write_audio(p, tone(800, 8000, 600), 8000, force=True)
    assert p.read_bytes() != before


def test_write_audio_failure_leaves_no_partial_output(tmp_path, monkeypatch):
    p = write_audio(tmp_path / "x.wav", tone(800, 8000), 8000)
    before = p.read_bytes()

    def broken_write(file, data, *args, **kwargs):
        with open(file, "wb") as f:
            f.write(b"RIFF half")  # a crash half-way through
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(audio.sf, "write", broken_write)
    with pytest.raises(SepError, match="cannot write"):
        write_audio(p, tone(800, 8000, 900), 8000, force=True)
    assert p.read_bytes() == before  # old file intact
    with pytest.raises(SepError):
        write_audio(tmp_path / "new.wav", tone(800, 8000), 8000)
    assert not (tmp_path / "new.wav").exists()
    assert leftover_temps(tmp_path) == []


def test_write_audio_clips_pcm_with_warning_but_float_keeps(tmp_path, sep_log):
    x = np.array([0.5, 1.5, -2.0, 0.25], np.float32)
    p16 = write_audio(tmp_path / "a.wav", x, 8000)
    assert any("2 samples" in r.getMessage() for r in sep_log.records)
    np.testing.assert_allclose(sf.read(p16)[0], [0.5, 32767 / 32768, -1.0, 0.25], atol=1e-4)
    pf = write_audio(tmp_path / "b.wav", x, 8000, subtype="FLOAT")
    np.testing.assert_array_equal(sf.read(pf, dtype="float32")[0], x)


@pytest.mark.parametrize(
    "kwargs, data, match",
    [
        ({"subtype": "MP3"}, np.zeros(10, np.float32), "subtype"),
        ({}, np.zeros((2, 3, 4), np.float32), r"\[T\] or \[C, T\]"),
        ({}, np.array([0.0, np.nan], np.float32), "NaN"),
        ({}, np.zeros(0, np.float32), "empty"),
    ],
)
def test_write_audio_bad_input(tmp_path, kwargs, data, match):
    with pytest.raises(SepError, match=match):
        write_audio(tmp_path / "x.wav", data, 8000, **kwargs)
    assert not (tmp_path / "x.wav").exists()


def test_audio_writer_streams_blocks(tmp_path):
    x = speechlike(RNG, 10000).astype(np.float32)
    p = tmp_path / "out.wav"
    with AudioWriter(p, 8000, subtype="FLOAT") as w:
        for i in range(0, len(x), 3333):
            w.write(x[i : i + 3333])
            assert not p.exists()  # appears only at the end
    assert w.frames == len(x)
    np.testing.assert_array_equal(read_audio(p)[0], x)
    assert leftover_temps(tmp_path) == []


def test_audio_writer_multichannel_and_shape_check(tmp_path):
    x = np.stack([tone(2000, 8000, 300), tone(2000, 8000, 500)])  # [2, T]
    p = tmp_path / "st.wav"
    with AudioWriter(p, 8000, channels=2) as w:
        w.write(x[:, :1000])
        with pytest.raises(SepError, match="channel"):
            w.write(x[0, 1000:])
        w.write(x[:, 1000:])
    data, _ = sf.read(p, always_2d=True)
    np.testing.assert_allclose(data.T, x, atol=1 / 32768)


def test_audio_writer_exception_leaves_nothing(tmp_path):
    p = tmp_path / "out.wav"
    with pytest.raises(RuntimeError):
        with AudioWriter(p, 8000) as w:
            w.write(tone(1000, 8000))
            raise RuntimeError("model crashed")
    assert not p.exists()
    assert leftover_temps(tmp_path) == []


def test_audio_writer_exception_keeps_existing_file(tmp_path):
    p = write_audio(tmp_path / "out.wav", tone(500, 8000), 8000)
    before = p.read_bytes()
    with pytest.raises(RuntimeError):
        with AudioWriter(p, 8000, force=True) as w:
            w.write(tone(1000, 8000, 900))
            raise RuntimeError("boom")
    assert p.read_bytes() == before
    with pytest.raises(SepError, match="exists"):
        AudioWriter(p, 8000)


# ----------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("block_frames", [1, 777, 4096, 100000])
def test_block_reader_without_resampling_is_exact(tmp_path, block_frames):
    x = speechlike(RNG, 9001).astype(np.float32)
    p = tmp_path / "x.wav"
    sf.write(p, x, 8000, subtype="FLOAT")
    with BlockReader(p, block_frames=block_frames) as r:
        blocks = list(r)
        assert r.out_frames == 9001 and r.info.frames == 9001 and r.sample_rate == 8000
    assert all(0 < len(b) <= block_frames and b.dtype == np.float32 for b in blocks)
    np.testing.assert_array_equal(np.concatenate(blocks), read_audio(p)[0])


@pytest.mark.parametrize("sr_in, n", [(16000, 16001), (44100, 44100 + 7), (22050, 30000), (8000, 5000)])
@pytest.mark.parametrize("block_frames", [500, 8192])
def test_block_reader_resampling_matches_read_audio(tmp_path, sr_in, n, block_frames):
    x = speechlike(RNG, n, sr_in).astype(np.float32)
    p = tmp_path / "x.flac"
    sf.write(p, x, sr_in, subtype="PCM_24")
    sr_out = 8000 if sr_in != 8000 else 16000
    with BlockReader(p, sr_out, block_frames=block_frames) as r:
        blocks = list(r)
        out_frames = r.out_frames
    y = np.concatenate(blocks)
    whole, rate = read_audio(p, sr_out)
    assert rate == sr_out
    assert len(y) == out_frames == len(whole) == resampled_length(n, sr_in, sr_out)
    assert all(len(b) > 0 for b in blocks)
    np.testing.assert_allclose(y, whole, atol=1e-6)


def test_block_reader_downmixes_and_iterates_again(tmp_path):
    x = np.stack([tone(5000, 16000, 300), tone(5000, 16000, 800, 0.2)], axis=1)  # [T, 2]
    p = tmp_path / "st.wav"
    sf.write(p, x, 16000, subtype="FLOAT")
    with BlockReader(p, 8000, block_frames=1024) as r:
        first = np.concatenate(list(r))
        second = np.concatenate(list(r))
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, read_audio(p, 8000)[0], atol=1e-6)


def test_block_reader_nan_and_bad_block_size(tmp_path):
    x = np.zeros(3000, np.float32)
    x[2500] = np.nan
    p = tmp_path / "x.wav"
    sf.write(p, x, 8000, subtype="FLOAT")
    with BlockReader(p, block_frames=1000) as r:
        with pytest.raises(SepError, match=r"NaN.*0\.312 s"):
            list(r)
    with pytest.raises(SepError, match="block_frames"):
        BlockReader(p, block_frames=0)


# ----------------------------------------------------------------------------- shared helpers


def test_one_extension_list_covers_every_former_list():
    corpus_list = (".flac", ".wav", ".ogg", ".oga", ".aiff", ".aif", ".mp3")  # training/corpus before issue 31
    evaluate_list = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")  # evaluate before issue 31
    assert set(corpus_list) | set(evaluate_list) <= audio.AUDIO_EXTENSIONS
    assert audio.has_audio_suffix("a/B.FLAC") and audio.has_audio_suffix("x.opus")
    assert not audio.has_audio_suffix("notes.txt") and not audio.has_audio_suffix("wav")


def test_atomic_file_commits_on_success_and_leaves_nothing_on_error(tmp_path):
    dest = tmp_path / "x.bin"
    with audio.AtomicFile(dest) as tmp:
        assert tmp.parent == tmp_path and tmp != dest
        tmp.write_bytes(b"new")
        assert not dest.exists()  # nothing at the destination until the rename
    assert dest.read_bytes() == b"new" and leftover_temps(tmp_path) == []
    with pytest.raises(RuntimeError):
        with audio.AtomicFile(dest) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("cut")
    assert dest.read_bytes() == b"new" and leftover_temps(tmp_path) == []


@pytest.mark.parametrize("data", [b"\x00bytes", "text é\n", lambda f: f.write(b"from a function")])
def test_atomic_write_takes_bytes_text_or_a_writer(tmp_path, data):
    p = audio.atomic_write(tmp_path / "x", data, fsync=True)
    want = data if isinstance(data, bytes) else data.encode() if isinstance(data, str) else b"from a function"
    assert p.read_bytes() == want
    assert stat.S_IMODE(os.stat(p).st_mode) == audio.NEW_FILE_MODE and leftover_temps(tmp_path) == []


def test_atomic_dir_replaces_the_old_folder_or_leaves_it(tmp_path):
    out = tmp_path / "set"
    with audio.atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("1")
        assert not out.exists()
    assert [p.name for p in out.iterdir()] == ["a.txt"]
    with pytest.raises(RuntimeError):
        with audio.atomic_dir(out) as tmp:
            (tmp / "b.txt").write_text("2")
            raise RuntimeError("cut")
    assert [p.name for p in out.iterdir()] == ["a.txt"]  # the old set, untouched
    with audio.atomic_dir(out) as tmp:
        (tmp / "b.txt").write_text("2")
    assert [p.name for p in out.iterdir()] == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]  # no temp or old folder left


@pytest.mark.parametrize("sr_in, sr_out", [(8000, 8000), (16000, 8000), (8000, 44100)])
def test_resample_blocks_equals_one_shot_and_is_pinned(sr_in, sr_out):
    x = speechlike(RNG, 9001).astype(np.float32)
    whole = resample(x, sr_in, sr_out)
    blocks = list(audio.resample_blocks(np.array_split(x, 7), sr_in, sr_out, len(whole)))
    assert all(b.dtype == np.float32 and len(b) > 0 for b in blocks)
    np.testing.assert_allclose(np.concatenate(blocks), whole, atol=1e-6)
    longer = np.concatenate(list(audio.resample_blocks([x], sr_in, sr_out, len(whole) + 5)))
    assert len(longer) == len(whole) + 5 and not longer[-5:].any()  # zero-padded at the end
    assert len(np.concatenate(list(audio.resample_blocks([x], sr_in, sr_out, 100)))) == 100


def test_play_faster_is_the_fractional_soxr_ratio():
    x = speechlike(RNG, 8000).astype(np.float32)
    y = audio.play_faster(x, 1.25, 8000)
    np.testing.assert_array_equal(y, soxr.resample(x, 8000 * 1.25, 8000, quality="HQ"))
    assert abs(len(y) - 8000 / 1.25) <= 1

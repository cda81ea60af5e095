"""Separator API: arrays and files, levels, skip/force, batches."""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from sepcli import api, registry
from tests.sigtools import speechlike
from sepcli.api import Separator, find_audio_files, separate, separate_files
from sepcli.errors import SepError
from sepcli.metrics import si_snr

torch.set_num_threads(1)


@dataclass
class TinyConfig:
    sample_rate: int = 8000
    n_src: int = 2


class FirstIsMix(torch.nn.Module):
    """Speaker 1 is the whole mixture, speaker 2 silence: exact, checkable output."""

    def __init__(self, sample_rate: int = 8000) -> None:
        super().__init__()
        self.config = TinyConfig(sample_rate=sample_rate)

    def separate(self, mix: torch.Tensor, n_src: int | None = None) -> torch.Tensor:
        return torch.stack([mix, torch.zeros_like(mix)], dim=1)  # [B, 2, T]


class Loud(torch.nn.Module):
    """Tracks [2 mix, -mix]: they add up to the mixture but peak at twice its level."""

    config = TinyConfig()

    def separate(self, mix: torch.Tensor, n_src: int | None = None) -> torch.Tensor:
        return torch.stack([2 * mix, -mix], dim=1)


class CountingByLevel(torch.nn.Module):
    """A clustering-like model for n_src="auto": one track while the chunk is
    quiet, two (low and high band) once it is loud."""

    config = TinyConfig()

    def separate(self, mix: torch.Tensor, n_src: int | str | None = None) -> torch.Tensor:
        assert n_src == "auto"
        if mix.abs().max() < 0.3:
            return mix[:, None, :]
        low = torch.nn.functional.avg_pool1d(mix[:, None, :], 5, stride=1, padding=2)[:, 0]
        return torch.stack([low, mix - low], dim=1)


def noise(seconds: float, rate: int, channels: int = 1, level: float = 0.3, seed: int = 0) -> np.ndarray:
    x = level * np.random.default_rng(seed).standard_normal((int(seconds * rate), channels))
    return np.clip(x, -1, 1).astype(np.float32)


def si_snr_db(est: np.ndarray, ref: np.ndarray) -> float:
    return float(si_snr(est, ref))


def write(path: Path, x: np.ndarray, rate: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, rate, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = registry.build("convtasnet", N=16, L=16, B=8, H=16, Sc=8, X=2, R=1)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    registry.save_model(model, path)
    return path


# ----------------------------------------------------------------------------- arrays


@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000])
@pytest.mark.parametrize("channels", [1, 2])
def test_array_output_has_input_length_and_adds_up_to_the_mix(rate: int, channels: int) -> None:
    x = noise(0.7, rate, channels).T  # [C, T]
    sep = Separator(FirstIsMix(), device="cpu", segment=0.25)
    est = sep.separate(x if channels > 1 else x[0], rate)
    assert est.shape == (2, x.shape[1]) and est.dtype == np.float32
    mono = x.mean(axis=0)
    if rate == 8000:
        np.testing.assert_array_equal(est[0], mono)  # model rate: no resampling, exact
    else:
        # Through an 8 kHz model: the tracks add up to the band-limited mixture.
        from sepcli.audio import resample

        band = api._fit_length(resample(resample(mono, rate, 8000), 8000, rate), mono.shape[0])
        np.testing.assert_allclose(est.sum(axis=0), band, atol=1e-5)
    assert not est[1].any()


def test_array_accepts_torch_and_functional_form() -> None:
    x = noise(0.3, 8000)[:, 0]
    est = separate(torch.from_numpy(x), 8000, FirstIsMix(), device="cpu")
    np.testing.assert_array_equal(est[0], x)


def test_array_input_errors() -> None:
    sep = Separator(FirstIsMix(), device="cpu")
    with pytest.raises(SepError, match="looks like \\[T, C\\]"):
        sep.separate(np.zeros((1000, 2), np.float32), 8000)
    with pytest.raises(SepError, match="NaN"):
        sep.separate(np.full(100, np.nan, np.float32), 8000)
    with pytest.raises(SepError, match="sample_rate"):
        sep.separate(np.zeros(100, np.float32), 0)
    with pytest.raises(SepError, match="empty"):
        sep.separate(np.zeros(0, np.float32), 8000)


# ----------------------------------------------------------------------------- files


@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000])
@pytest.mark.parametrize("channels", [1, 2])
def test_file_outputs_match_input_rate_and_length(tmp_path: Path, rate: int, channels: int) -> None:
    src = write(tmp_path / "in" / "talk.flac", noise(0.9, rate, channels), rate)
    sep = Separator(FirstIsMix(), device="cpu", segment=0.3)
    result = sep.separate_file(src, tmp_path / "out")
    assert result.status == "ok" and result.n_src == 2
    assert [Path(p).name for p in result.outputs] == ["s1.wav", "s2.wav"]
    for p in result.outputs:
        info = sf.info(p)
        assert (info.samplerate, info.frames, info.channels) == (rate, sf.info(str(src)).frames, 1)
    if rate == 8000 and channels == 1:
        # No resampling and levels kept: speaker 1 is the input, sample for sample.
        a, _ = sf.read(str(src), dtype="int16")
        b, _ = sf.read(result.outputs[0], dtype="int16")
        np.testing.assert_array_equal(a, b)


def test_streamed_file_equals_in_memory_separation(tmp_path: Path, tiny_ckpt: Path) -> None:
    rate = 22050
    src = write(tmp_path / "x.wav", noise(2.5, rate, 2, seed=3), rate)
    sep = Separator(tiny_ckpt, device="cpu", segment=0.5, overlap=0.3)
    result = sep.separate_file(src, tmp_path / "out", subtype="FLOAT")
    x, _ = sf.read(str(src), dtype="float32", always_2d=True)
    est = sep.separate(x.T, rate)
    got = np.stack([sf.read(p, dtype="float32")[0] for p in result.outputs])
    assert result.gain_db == 0.0
    np.testing.assert_allclose(got, est, atol=2e-6)


def test_clipping_is_avoided_by_scaling_all_tracks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    x = np.clip(noise(0.5, 8000, level=0.3), -0.5, 0.5)
    x[100] = 0.9
    src = write(tmp_path / "loud.wav", x, 8000)
    with caplog.at_level(logging.WARNING, logger="sepcli"):
        result = Separator(Loud(), device="cpu").separate_file(src, tmp_path / "out", subtype="FLOAT")
    s1, s2 = (sf.read(p, dtype="float32")[0] for p in result.outputs)
    assert np.abs(s1).max() <= 1.0 and np.abs(s1).max() == pytest.approx(api.PEAK_TARGET, abs=1e-6)
    assert result.peak == pytest.approx(1.8, rel=1e-3)
    assert result.gain_db == pytest.approx(20 * np.log10(api.PEAK_TARGET / 1.8), abs=1e-3)
    np.testing.assert_allclose(s1, -2 * s2, atol=1e-6)  # same factor for every track
    assert any("scaled" in r.getMessage() and "clipping" in r.getMessage() for r in caplog.records)


def test_digital_silence_gives_silent_outputs(tmp_path: Path, tiny_ckpt: Path) -> None:
    src = write(tmp_path / "quiet.wav", np.zeros((12000, 1), np.float32), 16000)
    result = Separator(tiny_ckpt, device="cpu", segment=0.2).separate_file(src, tmp_path / "out")
    for p in result.outputs:
        y, _ = sf.read(p, dtype="float32")
        assert y.shape == (12000,) and np.isfinite(y).all() and not y.any()


def test_audio_shorter_than_one_segment(tmp_path: Path, tiny_ckpt: Path) -> None:
    src = write(tmp_path / "short.wav", noise(0.05, 44100), 44100)
    result = Separator(tiny_ckpt, device="cpu", segment=4.0).separate_file(src, tmp_path / "out")
    assert result.chunks == 1
    assert all(sf.info(p).frames == 2205 for p in result.outputs)


def test_skip_existing_and_force(tmp_path: Path) -> None:
    src = write(tmp_path / "a.wav", noise(0.4, 8000), 8000)
    sep = Separator(FirstIsMix(), device="cpu")
    first = sep.separate_file(src, tmp_path / "out")
    os.utime(first.outputs[0], (1, 1))  # mark: a rewrite changes the mtime
    again = sep.separate_file(src, tmp_path / "out")
    assert again.status == "skipped" and again.outputs == first.outputs
    assert os.stat(first.outputs[0]).st_mtime == 1
    forced = sep.separate_file(src, tmp_path / "out", force=True)
    assert forced.status == "ok" and os.stat(first.outputs[0]).st_mtime > 1
    Path(first.outputs[1]).unlink()  # an interrupted run left only s1
    with pytest.raises(SepError, match="some outputs exist.*--force"):
        sep.separate_file(src, tmp_path / "out")
    assert sep.separate_file(src, tmp_path / "out", force=True).status == "ok"


def test_no_partial_outputs_or_temp_files_after_a_failure(tmp_path: Path) -> None:
    class Broken(FirstIsMix):
        calls = 0

        def separate(self, mix: torch.Tensor, n_src: int | None = None) -> torch.Tensor:
            Broken.calls += 1
            if Broken.calls > 2:
                raise RuntimeError("boom")
            return super().separate(mix)

    src = write(tmp_path / "a.wav", noise(3.0, 8000), 8000)
    with pytest.raises(RuntimeError, match="boom"):
        Separator(Broken(), device="cpu", segment=0.5).separate_file(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nor an empty folder


def test_filename_template(tmp_path: Path) -> None:
    src = write(tmp_path / "talk.wav", noise(0.2, 8000), 8000)
    result = Separator(FirstIsMix(), device="cpu").separate_file(
        src, tmp_path / "out", filename="{stem}_speaker{i}of{n}.wav"
    )
    assert [Path(p).name for p in result.outputs] == ["talk_speaker1of2.wav", "talk_speaker2of2.wav"]
    for bad, why in [("{stem}.wav", "{i}"), ("s{i}.wav", "{stem}"), ("{stem}/s{i}.mp3", ".wav"),
                     ("{stem}/{speaker}.wav", "fields")]:
        with pytest.raises(SepError, match=why.replace("{", "\\{").replace("}", "\\}")):
            api.check_template(bad)


def test_plot_writes_a_png(tmp_path: Path) -> None:
    src = write(tmp_path / "talk.wav", noise(0.6, 16000, 2), 16000)
    result = Separator(FirstIsMix(), device="cpu").separate_file(src, tmp_path / "out", plot=True)
    assert result.plot is not None and Path(result.plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = write(tmp_path / "talk.wav", noise(0.2, 8000), 8000)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    with pytest.raises(SepError, match="matplotlib"):
        Separator(FirstIsMix(), device="cpu").separate_file(src, tmp_path / "out", plot=True)
    assert not (tmp_path / "out" / "talk" / "s1.wav").exists()


def test_auto_speaker_count_opens_tracks_as_needed(tmp_path: Path) -> None:
    x = noise(3.0, 8000, level=0.05)
    x[12000:] *= 10.0  # loud (two "speakers") from 1.5 s
    src = write(tmp_path / "a.wav", x, 8000)
    sep = Separator(CountingByLevel(), device="cpu", segment=0.5, n_src="auto")
    result = sep.separate_file(src, tmp_path / "out")
    assert result.n_src == 2
    s1, s2 = (sf.read(p, dtype="float32")[0] for p in result.outputs)
    assert s1.shape == s2.shape == (24000,)
    assert not s2[:8000].any() and np.abs(s2[16000:]).max() > 0.01
    assert sep.separate_file(src, tmp_path / "out").status == "skipped"


# ----------------------------------------------------------------------------- model and device


def test_missing_default_model_points_to_sep_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEP_MODELS_DIR", str(tmp_path))
    with pytest.raises(SepError, match="sep models"):
        Separator(None)


def test_cuda_unavailable_is_a_seperror() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(SepError, match="CUDA is not available"):
        Separator(FirstIsMix(), device="cuda")


def test_fixed_count_model_refuses_other_counts(tiny_ckpt: Path) -> None:
    with pytest.raises(SepError, match="exactly 2 speakers"):
        Separator(tiny_ckpt, device="cpu", n_src=3)
    assert Separator(tiny_ckpt, device="cpu", n_src=2).n_src is None  # its own count is fine


# ----------------------------------------------------------------------------- batches


def test_find_audio_files(tmp_path: Path) -> None:
    write(tmp_path / "d" / "a.wav", noise(0.1, 8000), 8000)
    write(tmp_path / "d" / "sub" / "b.flac", noise(0.1, 8000), 8000)
    write(tmp_path / "d" / ".hidden.wav", noise(0.1, 8000), 8000)
    write(tmp_path / "d" / "out" / "a" / "s1.wav", noise(0.1, 8000), 8000)
    (tmp_path / "d" / "notes.txt").write_text("x")
    found, problems = find_audio_files(
        [tmp_path / "d", str(tmp_path / "d" / "*.wav"), tmp_path / "nope.wav", str(tmp_path / "*.zzz")],
        exclude=[tmp_path / "d" / "out"],
    )
    assert [(f.path.name, f.parent) for f in found] == [("a.wav", ""), ("b.flac", "sub")]
    assert [p[0] for p in problems] == [str(tmp_path / "nope.wav"), str(tmp_path / "*.zzz")]


def test_batch_goes_on_after_per_file_errors(tmp_path: Path, tiny_ckpt: Path) -> None:
    write(tmp_path / "in" / "good1.wav", noise(0.3, 8000), 8000)
    (tmp_path / "in" / "broken.wav").write_bytes(b"RIFF\x00\x00not audio at all")
    write(tmp_path / "in" / "good2.flac", noise(0.3, 16000), 16000)
    batch = separate_files([tmp_path / "in", tmp_path / "missing.wav"], tmp_path / "out",
                           model=str(tiny_ckpt), device="cpu")
    status = {Path(r.input).name: r.status for r in batch.results}
    assert status == {"broken.wav": "failed", "good1.wav": "ok", "good2.flac": "ok", "missing.wav": "failed"}
    assert (batch.ok, batch.failed) == (2, 2)
    assert (tmp_path / "out" / "good2" / "s2.wav").exists()
    again = separate_files([tmp_path / "in"], tmp_path / "out", model=str(tiny_ckpt), device="cpu")
    assert (again.ok, again.skipped, again.failed) == (0, 2, 1)


def test_same_names_in_different_folders(tmp_path: Path) -> None:
    write(tmp_path / "in" / "a" / "x.wav", noise(0.2, 8000), 8000)
    write(tmp_path / "in" / "b" / "x.wav", noise(0.2, 8000, seed=1), 8000)
    batch = separate_files([tmp_path / "in"], tmp_path / "out", model=FirstIsMix(), device="cpu")
    assert [r.status for r in batch.results] == ["ok", "failed"]
    assert "{parent}" in (batch.results[1].error or "")
    batch = separate_files([tmp_path / "in"], tmp_path / "out2", model=FirstIsMix(), device="cpu",
                           filename="{parent}/{stem}/s{i}.wav")
    assert batch.ok == 2 and (tmp_path / "out2" / "b" / "x" / "s1.wav").exists()


def test_parallel_jobs_give_the_same_outputs(tmp_path: Path, tiny_ckpt: Path) -> None:
    for k in range(2):
        write(tmp_path / "in" / f"f{k}.wav", noise(0.5, 8000, seed=k), 8000)
    one = separate_files([tmp_path / "in"], tmp_path / "j1", model=str(tiny_ckpt), device="cpu")
    two = separate_files([tmp_path / "in"], tmp_path / "j2", model=str(tiny_ckpt), device="cpu", jobs=2)
    assert one.ok == two.ok == 2
    for r1, r2 in zip(one.results, two.results, strict=True):
        for a, b in zip(r1.outputs, r2.outputs, strict=True):
            assert Path(a).read_bytes() == Path(b).read_bytes()


def test_deep_clustering_plugs_into_the_same_engine(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = registry.build("dpcl", hidden=8, layers=1, emb_dim=4, kmeans_n_init=1, kmeans_max_bins=500)
    x = noise(1.2, 16000, seed=4)
    src = write(tmp_path / "talk.wav", x, 16000)
    for n_src, expect in [(3, 3), ("auto", None)]:
        sep = Separator(model, device="cpu", segment=0.5, n_src=n_src, equalize=0.0)
        result = sep.separate_file(src, tmp_path / f"out_{n_src}", subtype="FLOAT")
        assert expect is None or result.n_src == expect
        tracks = np.stack([sf.read(p, dtype="float32")[0] for p in result.outputs])
        assert tracks.shape == (result.n_src, 19200)
        # Binary masks partition the mixture, so the tracks add up to it (band-limited to 8 kHz).
        from sepcli.audio import resample

        mono, _ = sf.read(str(src), dtype="float32")
        band = api._fit_length(resample(resample(mono, 16000, 8000), 8000, 16000), 19200)
        assert np.sqrt(np.mean((tracks.sum(axis=0) - band) ** 2)) < 1e-4 * np.sqrt(np.mean(band**2))


def test_package_exports_the_functional_api():
    import sepcli
    from sepcli import api

    assert sepcli.Separator is api.Separator and sepcli.separate is api.separate
    with pytest.raises(AttributeError):
        sepcli.no_such_thing  # noqa: B018


def test_two_passes_are_the_mean_of_the_model_and_its_half_hop_delayed_copy() -> None:
    torch.manual_seed(3)
    model = registry.build("convtasnet", N=16, L=16, B=8, H=16, Sc=8, X=2, R=1).eval()
    x = noise(0.5, 8000, seed=5)[:, 0]  # [T]
    n, hop = x.shape[0], model.frame_hop
    with torch.inference_mode():
        plain = model(torch.from_numpy(x)[None])[0].numpy()  # [S, T]
        delayed = model(torch.from_numpy(np.pad(x, (hop // 2, 0)))[None])[0, :, hop // 2 : hop // 2 + n].numpy()
    straight = plain[0] @ delayed[0] + plain[1] @ delayed[1]
    crossed = plain[0] @ delayed[1] + plain[1] @ delayed[0]
    mean = 0.5 * (plain + (delayed if straight >= crossed else delayed[::-1]))
    # One chunk, so the engine only fits levels: compare up to each track's gain.
    y = Separator(model, device="cpu", segment=1.0, passes=2, precision="float32", equalize=0.0).separate(x, 8000)
    for est, ref in zip(y, mean, strict=True):
        assert si_snr_db(est, ref) > 60
    assert min(si_snr_db(y[i], plain[i]) for i in range(2)) < 60  # and not one pass


def test_a_causal_models_passes_are_aligned_causally_as_its_stream() -> None:
    # sep separate and sep stream must agree on what two passes of a causal
    # model are: the Separator's function is the streaming module's offline average.
    from sepcli import streaming

    torch.manual_seed(6)
    model = registry.build("convtasnet", N=16, L=16, B=8, H=16, Sc=8, X=2, R=1, causal=True).eval()
    x = noise(0.5, 8000, seed=7)[:, 0]  # [T]
    sep = Separator(model, device="cpu", passes=2, precision="float32")
    assert sep.equalize == 12.0  # the causal preset's running equalizer, which streams too
    np.testing.assert_allclose(sep.fn(x[None])[0], streaming.offline(model, x, passes=2, equalize=12.0),
                               rtol=0, atol=1e-6)
    plain = Separator(model, device="cpu", passes=2, precision="float32", equalize=0.0)
    np.testing.assert_allclose(plain.fn(x[None])[0], streaming.offline(model, x, passes=2), rtol=0, atol=1e-6)


def _matched_max_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Max |a - b| over the better of the two track orders. Shape: a, b [2, T]."""
    return min(float(np.abs(a - b).max()), float(np.abs(a - b[::-1]).max()))


def test_pass_signs_make_the_output_odd_whatever_the_model() -> None:
    torch.manual_seed(4)
    model = registry.build("convtasnet", N=16, L=16, B=8, H=16, Sc=8, X=2, R=1).eval()
    x = noise(0.5, 8000, seed=6)[:, 0]  # [T]
    peak = float(np.abs(x).max())
    odd = Separator(model, device="cpu", segment=1.0, passes=2, pass_signs=True, precision="float32",
                    equalize=0.0)
    assert odd.pass_signs and odd.passes == 2
    # The flipped recording gives the flipped tracks (in either order: PIT).
    assert _matched_max_diff(odd.separate(-x, 8000), -odd.separate(x, 8000)) <= 1e-5 * peak
    # A random Conv-TasNet is not odd by itself (its encoder has a ReLU), so the
    # check above is not vacuous: delays alone leave the polarity dependence.
    plain = Separator(model, device="cpu", segment=1.0, passes=2, pass_signs=False, precision="float32")
    assert _matched_max_diff(plain.separate(-x, 8000), -plain.separate(x, 8000)) > 1e-3 * peak
    # Two passes with signs: the mean of the model and its sign-flipped copy (no delay).
    with torch.inference_mode():
        a = model(torch.from_numpy(x)[None])[0].numpy()  # [S, T]
        b = -model(torch.from_numpy(-x)[None])[0].numpy()  # [S, T]
    b = b if a[0] @ b[0] + a[1] @ b[1] >= a[0] @ b[1] + a[1] @ b[0] else b[::-1]
    for est, ref in zip(odd.separate(x, 8000), 0.5 * (a + b), strict=True):
        assert si_snr_db(est, ref) > 60  # one chunk: the engine only fits levels


def test_passes_need_a_fixed_speaker_count() -> None:
    dpcl = registry.build("dpcl", hidden=8, layers=1, emb_dim=4, kmeans_n_init=1, kmeans_max_bins=500)
    with pytest.raises(SepError, match="fixed number"):
        Separator(dpcl, device="cpu", n_src="auto", passes=2)
    assert Separator(dpcl, device="cpu", n_src=2, passes=2).passes == 2 and dpcl.frame_hop == dpcl.config.hop


def test_precision_sets_the_products_and_stays_close_to_float32() -> None:
    from sepcli import engine
    from sepcli.metrics import si_snr

    torch.manual_seed(0)
    model = registry.build("convtasnet", N=32, L=8, B=16, H=32, Sc=16, X=3, R=1).eval()
    with torch.no_grad():
        for p in model.parameters():  # away from the init, so the masks are not all alike
            p.add_(0.2 * torch.randn(p.shape))
    mix = 0.3 * np.random.default_rng(1).standard_normal(8000 * 3).astype(np.float32)
    full = Separator(model, device="cpu", precision="float32")
    assert full.precision == "float32" and model.products == torch.float32
    ref = full.separate(mix, 8000)
    half = Separator(model, device="cpu", precision="bfloat16")
    assert half.precision == "bfloat16" and model.products == torch.bfloat16
    est = half.separate(mix, 8000)
    agreement = min(float(si_snr(est[s], ref[s])) for s in range(2))
    assert 30.0 < agreement < 100.0  # close, but really computed differently
    auto = Separator(model, device="cpu")
    assert auto.precision == ("bfloat16" if engine.native_bfloat16() else "float32")


def test_precision_errors() -> None:
    with pytest.raises(SepError, match="precision must be one of auto, float32, bfloat16"):
        Separator(FirstIsMix(), device="cpu", precision="fp16")
    with pytest.raises(SepError, match="no bfloat16 path"):
        Separator(FirstIsMix(), device="cpu", precision="bfloat16")
    assert Separator(FirstIsMix(), device="cpu", precision="auto").precision == "float32"


def test_causal_conv_tasnet_reports_float32_precision() -> None:
    # cLN models have no bfloat16 route: auto must not claim one.
    causal = registry.build("convtasnet", N=16, L=8, B=8, H=16, Sc=8, X=2, R=1, causal=True, norm="cLN")
    assert Separator(causal, device="cpu").precision == "float32"
    with pytest.raises(SepError, match="no bfloat16 path"):
        Separator(causal, device="cpu", precision="bfloat16")


def test_speed_views_of_a_level_model_give_back_its_tracks_through_chunking() -> None:
    # FirstIsMix at any speed still puts the whole mixture in track 1: after
    # the resampling round trip, chunking and the views' mean, track 1 is the
    # mixture and track 2 silence, at the input's rate and length.
    x = speechlike(np.random.default_rng(1), 20000).astype(np.float32)  # [T]: 2.5 s at 8 kHz, band-limited
    y = Separator(FirstIsMix(), device="cpu", segment=1.0, speeds=[1.0, 0.92, 0.88]).separate(x, 8000)
    assert y.shape == (2, x.shape[0])
    assert np.abs(y[1]).max() < 1e-6
    # Chunk joins cost nothing measurable (1-s chunks); only the file's last
    # samples carry the resampler's edge transient.
    assert si_snr_db(y[0, 100:-100], x[100:-100]) > 80 and si_snr_db(y[0], x) > 50


def test_speed_views_are_the_mean_of_the_plain_and_the_slowed_model() -> None:
    torch.manual_seed(8)
    model = registry.build("convtasnet", N=16, L=16, B=8, H=16, Sc=8, X=2, R=1).eval()
    x = noise(0.5, 8000, seed=9)[:, 0]  # [T]
    with torch.inference_mode():
        plain = model(torch.from_numpy(x)[None])[0].numpy()  # [S, T]
    with torch.inference_mode():
        slowed = model(torch.from_numpy(soxr.resample(x, 8000, 8696).astype(np.float32))[None])[0].numpy()
    back = soxr.resample(slowed.T, 8696, 8000).T[:, : x.shape[0]]  # [S, T], an independent round trip
    back = back if plain[0] @ back[0] + plain[1] @ back[1] >= plain[0] @ back[1] + plain[1] @ back[0] else back[::-1]
    y = Separator(model, device="cpu", segment=1.0, speeds=[1.0, 0.92], precision="float32",
                  equalize=0.0).separate(x, 8000)
    for est, ref in zip(y, 0.5 * (plain + back), strict=True):
        assert si_snr_db(est, ref) > 50  # one chunk: the engine only fits levels
    assert min(si_snr_db(y[i], plain[i]) for i in range(2)) < 50  # and not the plain model alone

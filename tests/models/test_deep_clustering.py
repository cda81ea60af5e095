"""Deep clustering backend: STFT, features, loss targets, k-means separation,
speaker counting and the checkpoint round trip. Tiny configs only."""
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf

from sepcli import registry
from sepcli.errors import SepError
from sepcli.models import deep_clustering_clusters as clusters
from sepcli.models.deep_clustering import (
    DeepClustering,
    DeepClusteringConfig,
    count_features,
    count_shares,
    embedding_shares,
    fit_count_classifier,
)

N_FFT, HOP, N_FREQ = 256, 64, 129
TINY = dict(layers=1, hidden=16, emb_dim=8)


def tiny(**overrides) -> DeepClustering:
    torch.manual_seed(0)
    return registry.build("dpcl", {**TINY, **overrides}).eval()


def ref_stft(x: torch.Tensor) -> torch.Tensor:
    """Independent reference: sqrt-Hann, 32 ms / 8 ms at 8 kHz. [N, T] -> [N, F, K]."""
    window = torch.hann_window(N_FFT, periodic=True, dtype=x.dtype).sqrt()
    return torch.stft(x, N_FFT, HOP, window=window, center=True, pad_mode="constant",
                      return_complex=True)


def ref_istft(spec: torch.Tensor, length: int) -> torch.Tensor:
    window = torch.hann_window(N_FFT, periodic=True, dtype=spec.real.dtype).sqrt()
    return torch.istft(spec, N_FFT, HOP, window=window, center=True, length=length)


def noise_sources(batch: int, n_src: int, length: int, seed: int = 0, gains_db=None) -> torch.Tensor:
    """White-noise 'speakers' with random slow envelopes. Shape: [B, S, T]."""
    gen = torch.Generator().manual_seed(seed)
    src = torch.randn(batch, n_src, length, generator=gen)
    env = torch.rand(batch, n_src, length // 400 + 2, generator=gen) + 0.2
    env = nnf.interpolate(env, size=length, mode="linear", align_corners=False)
    src = 0.1 * src * env
    if gains_db is not None:
        src = src * (10.0 ** (torch.tensor(gains_db, dtype=src.dtype) / 20.0))[None, :, None]
    return src


def ibm_labels(ref: torch.Tensor) -> torch.Tensor:
    """Index of the loudest source in every bin. Shape: [B, S, T] -> [B, K, F]."""
    batch, n_src, length = ref.shape
    mag = ref_stft(ref.reshape(batch * n_src, length)).abs()  # [B*S, F, K]
    mag = mag.view(batch, n_src, *mag.shape[1:])  # [B, S, F, K]
    return mag.argmax(dim=1).transpose(1, 2)


def oracle_embed(ref: torch.Tensor, dim: int, noise: float = 0.0, seed: int = 0):
    """An `embed` replacement whose embeddings encode the ideal binary mask:
    speaker s -> a fixed unit direction (orthonormal across speakers), plus noise."""
    labels = ibm_labels(ref)  # [B, K, F]
    gen = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(dim, dim, generator=gen))[0]  # orthonormal columns
    emb = nnf.one_hot(labels, dim).float() @ basis.T  # [B, K, F, D]
    emb = emb + noise * torch.randn(emb.shape, generator=gen)
    emb = nnf.normalize(emb, dim=-1)

    def embed(mix: torch.Tensor) -> torch.Tensor:
        assert mix.shape[-1] == ref.shape[-1]
        return emb

    return embed


def match_permutation(est: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """Reorder est [S, T] to best match want [S, T] (smallest squared error)."""
    n_src = want.shape[0]
    best = min(itertools.permutations(range(n_src)),
               key=lambda p: (est[list(p)] - want).square().sum().item())
    return est[list(best)]


# ---------------------------------------------------------------------------- STFT and features


@pytest.mark.parametrize("length", [1, 63, 64, 255, 1000, 4001])
def test_stft_istft_reconstructs_input(length):
    model = tiny()
    x = torch.randn(3, length)
    spec = model.stft(x)
    assert spec.shape == (3, N_FREQ, 1 + length // HOP)
    torch.testing.assert_close(spec, ref_stft(x))
    torch.testing.assert_close(model.istft(spec, length), x, atol=1e-5, rtol=1e-5)


def test_features_are_normalised_log_magnitude():
    model = tiny()
    gen = torch.Generator().manual_seed(1)
    mean, std = torch.randn(N_FREQ, generator=gen), torch.rand(N_FREQ, generator=gen) + 0.5
    model.set_normalization(mean, std)
    x = torch.randn(2, 2000)
    want = (torch.log(ref_stft(x).abs() + 1e-8).transpose(1, 2) - mean) / std
    torch.testing.assert_close(model.features(x), want)


def test_fit_normalization_matches_statistics_and_skips_digital_silence():
    model = tiny()
    gen = torch.Generator().manual_seed(2)
    loud = torch.randn(2, 3000, generator=gen) * torch.linspace(0.01, 1.0, N_FREQ).repeat(24)[:3000]
    quiet = 0.01 * torch.randn(1, 1, 1500, generator=gen)
    batches = [loud, quiet, torch.zeros(1, 4000), torch.randn(700, generator=gen)]
    frames = torch.cat([
        torch.log(ref_stft(x.reshape(-1, x.shape[-1])).abs() + 1e-8).transpose(1, 2).reshape(-1, N_FREQ)
        for x in (loud, quiet, batches[3][None])
    ]).double()  # [N, F], the all-zero item excluded
    n_frames = model.fit_normalization(batches)
    assert n_frames == frames.shape[0]
    torch.testing.assert_close(model.feat_mean.double(), frames.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.feat_std.double(), frames.std(0, correction=0), rtol=1e-4, atol=1e-5)
    with pytest.raises(SepError):
        model.fit_normalization([torch.zeros(2, 1000)])


def test_set_normalization_rejects_bad_values():
    model = tiny()
    with pytest.raises(SepError):
        model.set_normalization(torch.zeros(N_FREQ - 1), torch.ones(N_FREQ - 1))
    with pytest.raises(SepError):
        model.set_normalization(torch.zeros(N_FREQ), torch.zeros(N_FREQ))


def test_silence_weight_threshold_is_relative_to_mixture_peak():
    t = torch.arange(8000) / 8000
    # Tones centred on bins 32 and 96; the second is 50 dB down.
    x = torch.sin(2 * torch.pi * 1000 * t) + 10 ** (-50 / 20) * torch.sin(2 * torch.pi * 3000 * t)
    for silence_db, quiet_active in ((40.0, 0.0), (60.0, 1.0)):
        model = tiny(silence_db=silence_db)
        weight = model.silence_weight(model.stft(x[None]))  # [1, K, F]
        middle = weight[0, 5:-5]  # away from the zero-padded edges
        assert (middle[:, 32] == 1).all()
        assert (middle[:, 96] == quiet_active).all()
        assert (middle[:, 64] == 0).all()  # nothing there


# ---------------------------------------------------------------------------- network and loss


def test_embed_shape_and_unit_norm():
    model = tiny()
    emb = model.embed(torch.randn(2, 1, 1000))
    assert emb.shape == (2, 1 + 1000 // HOP, N_FREQ, TINY["emb_dim"])
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(emb.shape[:-1]))


def test_compute_loss_targets_and_weights(monkeypatch):
    """With identical embeddings everywhere VVᵀ = 1, so the loss is 1 − Σ_s p_s²,
    p_s the share of non-silent bins the IBM gives to source s."""
    model = tiny()
    ref = noise_sources(2, 3, 3000, seed=3, gains_db=[0.0, -4.0, -8.0])
    ref[:, :, 1000:1600] = 0  # a silent stretch that must get zero weight
    mix = ref.sum(1)
    labels = ibm_labels(ref)  # [B, K, F]
    mag = ref_stft(mix).abs().transpose(1, 2)  # [B, K, F]
    active = mag > mag.amax(dim=(1, 2), keepdim=True) * 10 ** (-40 / 20)
    assert (~active).any() and active.any()
    want = []
    for b in range(2):
        shares = torch.bincount(labels[b][active[b]], minlength=3).double() / active[b].sum()
        want.append(1 - shares.square().sum())
    const = nnf.normalize(torch.ones(TINY["emb_dim"]), dim=0)
    monkeypatch.setattr(model, "_embed_spec",
                        lambda spec: const.expand(spec.shape[0], spec.shape[2], spec.shape[1], -1))
    torch.testing.assert_close(model.compute_loss(mix, ref).double(), torch.stack(want).mean(),
                               rtol=1e-5, atol=1e-6)
    # Oracle embeddings (one-hot IBM) are a perfect fit: loss 0.
    monkeypatch.setattr(model, "_embed_spec", lambda spec: nnf.one_hot(labels, TINY["emb_dim"]).float())
    assert model.compute_loss(mix, ref).abs() < 1e-6


def test_compute_loss_is_differentiable_and_checks_shapes():
    model = tiny()
    ref = noise_sources(2, 2, 2000)
    loss = model.compute_loss(ref.sum(1), ref)
    loss.backward()
    assert loss.shape == () and torch.isfinite(loss)
    assert model.proj.weight.grad is not None and model.proj.weight.grad.abs().sum() > 0
    with pytest.raises(SepError):
        model.compute_loss(ref.sum(1), ref[:, :, :-1])
    with pytest.raises(SepError):
        model.compute_loss(ref.sum(1), ref[0])


def test_tiny_model_loss_falls():
    """Two sources with disjoint spectra (IBM is a function of frequency): 30 Adam
    steps on a fixed batch must at least halve the loss."""
    torch.manual_seed(0)
    model = registry.build("dpcl", layers=1, hidden=32, emb_dim=4).train()
    spec = torch.fft.rfft(noise_sources(2, 2, 4000, seed=4), dim=-1)  # [B, S, T/2+1]
    cut = spec.shape[-1] // 2
    spec[:, 0, cut:] = 0
    spec[:, 1, :cut] = 0
    ref = torch.fft.irfft(spec, n=4000, dim=-1)
    mix = ref.sum(1)
    model.fit_normalization([mix])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = model.compute_loss(mix, ref)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


# ---------------------------------------------------------------------------- separation


@pytest.mark.parametrize("temperature", [0.0, 0.5])
@pytest.mark.parametrize("n_src", [1, 2, 3])
def test_separate_shapes_sum_and_determinism(n_src, temperature):
    model = tiny(mask_temperature=temperature)
    mix = noise_sources(2, 2, 2345, seed=5).sum(1)
    est = model.separate(mix, n_src=n_src, seed=7)
    assert est.shape == (2, n_src, 2345)
    assert torch.isfinite(est).all()
    # Masks partition the spectrogram, so the tracks add back up to the mixture.
    torch.testing.assert_close(est.sum(1), mix, atol=1e-5, rtol=1e-5)
    assert torch.equal(est, model.separate(mix, n_src=n_src, seed=7))
    if n_src == 1:
        torch.testing.assert_close(est[:, 0], mix, atol=1e-5, rtol=1e-5)
    else:
        assert (est.square().sum(-1) > 0).all()  # every cluster got something


def test_forward_uses_config_n_src_and_accepts_channel_dim():
    model = tiny(n_src=3)
    mix = noise_sources(1, 2, 1500).sum(1)
    est = model(mix[:, None])
    assert est.shape == (1, 3, 1500)
    assert torch.equal(est, model.separate(mix))
    assert model.separate(mix, n_src="2").shape == (1, 2, 1500)


@pytest.mark.parametrize("n_src", [2, 3])
@pytest.mark.parametrize("max_bins", [20000, 300])
def test_oracle_embeddings_give_ideal_binary_mask_separation(monkeypatch, n_src, max_bins):
    model = tiny(kmeans_max_bins=max_bins)
    ref = noise_sources(2, n_src, 4000, seed=6)
    mix = ref.sum(1)
    monkeypatch.setattr(model, "embed", oracle_embed(ref, TINY["emb_dim"]))
    est = model.separate(mix, n_src=n_src)
    # IBM separation computed directly.
    spec = ref_stft(mix)  # [B, F, K]
    ibm = nnf.one_hot(ibm_labels(ref), n_src).permute(0, 3, 2, 1).float()  # [B, S, F, K]
    want = ref_istft((spec[:, None] * ibm).reshape(-1, *spec.shape[1:]), 4000).view(2, n_src, 4000)
    for b in range(2):
        torch.testing.assert_close(match_permutation(est[b], want[b]), want[b], atol=1e-5, rtol=1e-5)
    # ... and that is far better than the mixture as an estimate of each source.
    err = (match_permutation(est[0], ref[0]) - ref[0]).square().sum()
    assert err < 0.5 * (mix[0] - ref[0]).square().sum()


def test_kmeans_fit_is_bounded_on_long_inputs(monkeypatch):
    from sklearn.cluster import KMeans

    sizes = []
    fit = KMeans.fit

    def spy(self, X, *args, **kwargs):
        sizes.append(len(X))
        return fit(self, X, *args, **kwargs)

    monkeypatch.setattr(KMeans, "fit", spy)
    model = tiny(kmeans_max_bins=500)
    mix = noise_sources(1, 2, 16000, seed=8).sum(1)  # 251 frames x 129 bins
    est = model.separate(mix, n_src=2)
    assert sizes == [500]
    assert est.shape == (1, 2, 16000)
    torch.testing.assert_close(est.sum(1), mix, atol=1e-5, rtol=1e-5)


def test_tracks_are_ordered_loudest_first():
    model = tiny()
    emb = np.zeros((6, 2), dtype=np.float32)
    emb[[0, 1, 2], 0] = 1
    emb[[3, 4, 5], 1] = 1
    energy = np.array([1, 1, 1, 5, 5, 5], dtype=np.float64)
    labels = model._cluster(emb, np.ones(6, bool), energy, n_src=2, seed=0)
    assert labels.tolist() == [1, 1, 1, 0, 0, 0]


def test_kmeans_power_lets_loud_bins_set_the_centroids():
    """Two loud voices (50 bins each) and many quiet bins far from both: unweighted,
    the quiet bins claim a centroid and the voices share the other; weighted by
    |X|^2, the voices get a centroid each and the quiet bins join the nearer."""
    emb = np.zeros((1100, 2), dtype=np.float32)
    emb[50:100, 0] = 10.0
    emb[100:, 0] = 20.0
    energy = np.r_[np.ones(100), np.full(1000, 1e-6)]  # |X|^2
    active = np.ones(1100, bool)
    plain = tiny()._cluster(emb, active, energy, n_src=2, seed=0)
    assert plain[0] == plain[50] != plain[100]
    weighted = tiny(kmeans_power=2.0)._cluster(emb, active, energy, n_src=2, seed=0)
    assert weighted[0] != weighted[50] == weighted[100]
    assert len(set(weighted[:50])) == len(set(weighted[50:100])) == 1


def test_kmeans_power_keeps_separation_exact_with_oracle_embeddings(monkeypatch):
    """With embeddings that encode the ideal binary mask, weighting changes nothing."""
    ref = noise_sources(1, 3, 4000, seed=21, gains_db=[0.0, -3.0, -6.0])
    mix = ref.sum(1)
    outs = []
    for power in (0.0, 1.0, 2.0):
        model = tiny(kmeans_power=power)
        monkeypatch.setattr(model, "embed", oracle_embed(ref, model.config.emb_dim))
        outs.append(model.separate(mix, n_src=3))
    torch.testing.assert_close(outs[1], outs[0])
    torch.testing.assert_close(outs[2], outs[0])


def test_kmeans_power_with_a_silent_fit_set_is_unweighted():
    emb = np.random.default_rng(0).standard_normal((40, 3)).astype(np.float32)
    labels = tiny(kmeans_power=2.0)._cluster(emb, np.ones(40, bool), np.zeros(40), n_src=2, seed=0)
    assert labels.tolist() == tiny()._cluster(emb, np.ones(40, bool), np.zeros(40), n_src=2, seed=0).tolist()


def _soft_reference(emb: np.ndarray, centroids: np.ndarray, temperature: float) -> np.ndarray:
    """softmax over s of -|v - mu_s|^2 / T, from the full squared distances. [N, D], [S, D] -> [N, S]."""
    from scipy.special import softmax

    dist2 = ((emb[:, None, :].astype(np.float64) - centroids[None]) ** 2).sum(-1)  # [N, S]
    return softmax(-dist2 / temperature, axis=1)


@pytest.mark.parametrize("n_src", [2, 3])
def test_soft_masks_are_the_softmax_of_distances_to_the_binary_masks_centroids(n_src):
    emb = nnf.normalize(torch.randn(500, 8, generator=torch.Generator().manual_seed(3)), dim=-1).numpy()
    energy = np.random.default_rng(4).random(500)
    active = energy > 0.1
    kw = dict(max_bins=20000, n_init=3, power=2.0)
    centroids, labels = clusters.fit_centroids(emb, active, energy, n_src, 0, **kw)
    assert labels.tolist() == clusters.cluster_bins(emb, active, energy, n_src, 0, **kw).tolist()
    binary = clusters.cluster_masks(emb, active, energy, n_src, 0, temperature=0.0, **kw)
    assert binary.tolist() == np.eye(n_src)[labels].tolist()
    # Loudest first: the energy of the nearest bins falls with the track index.
    loudness = np.bincount(labels, weights=energy, minlength=n_src)
    assert (np.diff(loudness) <= 0).all()
    for temperature in (0.1, 0.5, 2.0):
        soft = clusters.cluster_masks(emb, active, energy, n_src, 0, temperature=temperature, **kw)
        np.testing.assert_allclose(soft, _soft_reference(emb, centroids, temperature), atol=1e-6)
        np.testing.assert_allclose(soft.sum(1), 1.0, atol=1e-6)
        assert (soft.argmax(1) == labels).all()  # the largest share goes to the nearest centroid
    # Cold enough, the soft masks are the binary ones, except on the rare bins
    # within a few T of the boundary between two clusters.
    cold = clusters.cluster_masks(emb, active, energy, n_src, 0, temperature=1e-4, **kw)
    dist2 = np.sort(((emb[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)  # [N, S]
    clear = dist2[:, 1] - dist2[:, 0] > 20 * 1e-4
    assert clear.mean() > 0.95
    np.testing.assert_allclose(cold[clear], binary[clear], atol=1e-6)


def test_soft_masks_split_a_bin_halfway_between_two_clusters():
    emb = np.zeros((201, 2), dtype=np.float32)
    emb[:100, 0] = 1.0
    emb[100:200, 1] = 1.0
    emb[200] = [np.sqrt(0.5), np.sqrt(0.5)]  # as near to one centroid as to the other
    active = np.ones(201, bool)
    active[200] = False  # not in the fit: the centroids are exactly the two directions
    masks = tiny(mask_temperature=0.5)._masks(emb, active, np.ones(201), n_src=2, seed=0)
    np.testing.assert_allclose(masks[200], [0.5, 0.5], atol=1e-6)
    # A cluster's own bins (squared distance 0 to their centroid, 2 to the other)
    # keep 1 / (1 + e^(-2 / T)) of themselves.
    own = 1.0 / (1.0 + np.exp(-2.0 / 0.5))
    np.testing.assert_allclose(np.sort(masks[:200], axis=1)[:, 1], own, atol=1e-6)


def test_soft_masks_with_oracle_embeddings_come_near_the_ideal_binary_mask(monkeypatch):
    """Exact embeddings sit on the centroids (distance 0 or 2 between orthonormal
    directions), so a temperature of 0.1 leaves each bin's share of its own speaker
    at 1 / (1 + e^-20): the separation is the ideal binary mask's."""
    ref = noise_sources(1, 2, 4000, seed=6)
    mix = ref.sum(1)
    outs = {}
    for temperature in (0.0, 0.1):
        model = tiny(mask_temperature=temperature)
        monkeypatch.setattr(model, "embed", oracle_embed(ref, TINY["emb_dim"]))
        outs[temperature] = model.separate(mix, n_src=2)
    torch.testing.assert_close(outs[0.1], outs[0.0], atol=1e-5, rtol=1e-5)


def test_digital_silence_gives_silent_outputs():
    model = tiny()
    mix = torch.zeros(2, 3000)
    for n_src in (1, 2, 3, "auto"):
        est = model.separate(mix, n_src=n_src)
        assert torch.isfinite(est).all() and est.abs().max() == 0
    assert model.count_speakers(mix) == [1, 1]
    ref = torch.zeros(2, 2, 3000)
    loss = model.compute_loss(mix, ref)
    assert torch.isfinite(loss)


def test_silence_in_one_item_does_not_affect_another():
    model = tiny()
    mix = noise_sources(1, 2, 2000, seed=9).sum(1)
    both = torch.cat([mix, torch.zeros_like(mix)])
    est = model.separate(both, n_src=2)
    torch.testing.assert_close(est[0], model.separate(mix, n_src=2)[0], atol=1e-6, rtol=1e-5)
    assert est[1].abs().max() == 0


@pytest.mark.parametrize("bad", [0, -1, "two", 2.5, True, "0"])
def test_bad_n_src_raises(bad):
    model = tiny()
    with pytest.raises(SepError):
        model.separate(torch.randn(1, 500), n_src=bad)


@pytest.mark.parametrize("mix", [
    torch.randn(2, 2, 500), torch.randn(500), torch.zeros(1, 0),
    torch.full((1, 500), float("nan")), torch.ones(1, 500, dtype=torch.int64),
])
def test_bad_mix_raises(mix):
    with pytest.raises(SepError):
        tiny().separate(mix)


@pytest.mark.parametrize("overrides", [dict(hop=200), dict(dropout=1.0), dict(n_src=0),
                                       dict(silence_db=-3), dict(auto_threshold=1.5), dict(layers=0),
                                       dict(auto_method="guess"), dict(kmeans_power=-1.0),
                                       dict(kmeans_power=5.0), dict(kmeans_power="2"),
                                       dict(kmeans_power=True), dict(auto_power=-1.0),
                                       dict(auto_power=[]), dict(auto_power=[2.0, 5.0]), dict(auto_power="2"),
                                       dict(auto_power=[2.0, 0.0]),  # "eigen" reads one set of shares
                                       dict(auto_method="logistic", auto_power=[2.0, 0.0],
                                            auto_logistic=[[0.0] * 9, [0.0] * 9]),  # 2 x D + 1 = 17 columns
                                       dict(mask_temperature=-0.1), dict(mask_temperature=True),
                                       dict(mask_temperature="0.5"),
                                       dict(auto_method="logistic"),
                                       dict(auto_logistic=[[0.0] * 9]),  # one class only
                                       dict(auto_logistic=[[0.0] * 8, [0.0] * 8]),  # D + 1 = 9 columns
                                       dict(auto_logistic=[[0.0] * 9, [float("nan")] * 9]),
                                       dict(auto_logistic="fitted"),
                                       dict(sa_weight=0.1),  # the signal term needs soft masks
                                       dict(sa_weight=-0.1, mask_temperature=0.5),
                                       dict(sa_weight=True, mask_temperature=0.5)])
def test_bad_config_raises(overrides):
    with pytest.raises(SepError):
        registry.build("dpcl", {**TINY, **overrides})


# ---------------------------------------------------------------------------- speaker counting


@pytest.mark.parametrize("n_src, gains_db", [
    (1, [0.0]), (2, [0.0, 0.0]), (2, [0.0, -5.0]), (3, [0.0, 0.0, 0.0]), (3, [0.0, -3.0, -5.0]),
])
@pytest.mark.parametrize("noise", [0.0, 0.2])
def test_auto_counts_speakers_from_oracle_like_embeddings(monkeypatch, n_src, gains_db, noise):
    model = tiny()
    ref = noise_sources(1, n_src, 4000, seed=10 + n_src, gains_db=gains_db)
    mix = ref.sum(1)
    monkeypatch.setattr(model, "embed", oracle_embed(ref, TINY["emb_dim"], noise=noise, seed=n_src))
    assert model.count_speakers(mix) == [n_src]
    est = model.separate(mix, n_src="auto")
    assert est.shape == (1, n_src, 4000)
    torch.testing.assert_close(est.sum(1), mix, atol=1e-5, rtol=1e-5)


def test_removed_silhouette_counter_is_a_clear_error_and_its_old_keys_load():
    with pytest.raises(SepError, match="auto_method 'silhouette' was removed; use one of eigen, logistic"):
        registry.build("dpcl", {**TINY, "auto_method": "silhouette"})
    old = registry.build("dpcl", {**TINY, "auto_silhouette": 0.2, "auto_silhouette_bins": 2000})
    assert not hasattr(old.config, "auto_silhouette") and old.config == tiny().config


def test_eigen_shares_equal_speaker_bin_shares_for_exact_embeddings(monkeypatch):
    model = tiny()
    ref = noise_sources(1, 3, 4000, seed=15, gains_db=[0.0, -3.0, -6.0])
    mix = ref.sum(1)
    monkeypatch.setattr(model, "embed", oracle_embed(ref, TINY["emb_dim"]))
    mag = ref_stft(mix).abs().transpose(1, 2)[0]  # [K, F]
    active = mag > mag.max() * 10 ** (-40 / 20)
    bin_shares = torch.bincount(ibm_labels(ref)[0][active], minlength=3).double() / active.sum()
    shares = model.eigen_shares(mix)
    assert shares.shape == (1, TINY["emb_dim"])
    torch.testing.assert_close(shares[0, :3], bin_shares.sort(descending=True).values)
    assert shares[0, 3:].abs().max() < 1e-9
    assert model.eigen_shares(torch.zeros(1, 4000)).abs().max() == 0


def test_auto_pads_batches_with_different_counts(monkeypatch):
    model = tiny()
    ref = noise_sources(2, 3, 3000, seed=11)
    ref[0, 1:] = 0  # item 0 has one speaker, item 1 three
    mix = ref.sum(1)
    monkeypatch.setattr(model, "embed", oracle_embed(ref, TINY["emb_dim"], noise=0.1))
    assert model.count_speakers(mix) == [1, 3]
    est = model.separate(mix, n_src="auto")
    assert est.shape == (2, 3, 3000)
    assert est[0, 1:].abs().max() == 0
    torch.testing.assert_close(est[0, 0], mix[0], atol=1e-5, rtol=1e-5)


def test_count_is_clipped_to_auto_max_src(monkeypatch):
    model = tiny(auto_max_src=2)
    ref = noise_sources(1, 3, 3000, seed=12)
    monkeypatch.setattr(model, "embed", oracle_embed(ref, TINY["emb_dim"]))
    assert model.count_speakers(ref.sum(1)) == [2]


def test_weighted_shares_are_speaker_energy_shares_for_exact_embeddings(monkeypatch):
    # Exact one-hot embeddings: with bins weighted by |X|^2 the eigenvalue
    # shares are each speaker's share of the non-silent bins' energy.
    model = tiny(auto_power=2.0)
    ref = noise_sources(1, 3, 4000, seed=16, gains_db=[0.0, -3.0, -6.0])
    mix = ref.sum(1)
    monkeypatch.setattr(model, "embed", oracle_embed(ref, TINY["emb_dim"]))
    energy = ref_stft(mix).abs().square().transpose(1, 2)[0]  # [K, F]
    active = energy > energy.max() * 10 ** (-40 / 10)
    per_speaker = torch.bincount(ibm_labels(ref)[0][active], weights=energy[active].double(), minlength=3)
    want = (per_speaker / per_speaker.sum()).sort(descending=True).values
    shares = model.eigen_shares(mix)
    torch.testing.assert_close(shares[0, :3], want)
    assert shares[0, 3:].abs().max() < 1e-9
    # power 1 against a dense reference: the weighted second moment formed bin by bin
    emb, bin_energy = model.active_bins(mix)[0]
    w = np.sqrt(bin_energy)
    moment = sum(wi * np.outer(v, v) for wi, v in zip(w, emb.astype(np.float64), strict=True)) / w.sum()
    eig = np.sort(np.linalg.eigvalsh(moment))[::-1]
    np.testing.assert_allclose(embedding_shares(emb, bin_energy, 1.0), eig / eig.sum(), atol=1e-12)
    with pytest.raises(SepError):
        embedding_shares(emb, None, 2.0)


def _synthetic_counting_set(n_per_count: int, seed: int, dim: int = 8):
    """Share vectors of embeddings drawn like a trained model's: S speakers on
    orthonormal directions with speaker-dependent spread, random levels."""
    rng = np.random.default_rng(seed)
    shares, counts = [], []
    for count in (1, 2, 3):
        for _ in range(n_per_count):
            basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0]
            n_bins = rng.integers(300, 600)
            owner = rng.choice(count, size=n_bins, p=rng.dirichlet(np.full(count, 3.0)))
            emb = basis[:, owner].T + rng.uniform(0.1, 0.4) * rng.standard_normal((n_bins, dim))
            emb /= np.linalg.norm(emb, axis=1, keepdims=True)
            energy = rng.exponential(size=n_bins)
            shares.append(embedding_shares(emb, energy, 2.0))
            counts.append(count)
    return np.stack(shares), np.array(counts)


def test_logistic_counter_predicts_like_scikit_learn_and_counts_held_out_mixtures():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    shares, counts = _synthetic_counting_set(60, seed=0)
    feats = count_features(shares)
    coef = fit_count_classifier(feats, counts, c=10.0)
    assert np.asarray(coef).shape == (3, TINY["emb_dim"] + 1)
    model = tiny(auto_method="logistic", auto_logistic=coef, auto_power=2.0)
    # the config's decision rule against scikit-learn's own standardize-then-fit pipeline
    test_shares, test_counts = _synthetic_counting_set(40, seed=1)
    test_feats = count_features(test_shares)
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=10.0, max_iter=20000)).fit(feats, counts)
    assert model.count_from_features(test_feats) == reference.predict(test_feats).tolist()
    folded = test_feats @ np.asarray(coef)[:, :-1].T + np.asarray(coef)[:, -1]  # [M, C]
    np.testing.assert_allclose(folded, reference.decision_function(test_feats), rtol=1e-9, atol=1e-9)
    # and it counts mixtures it was not fitted on
    assert np.mean(np.array(model.count_from_features(test_feats)) == test_counts) > 0.9


def test_fit_count_classifier_does_not_care_about_feature_units():
    # standardized before the penalty: a feature in other units (x 1000, shifted)
    # gets its weight scaled back, and every decision stays the same
    shares, counts = _synthetic_counting_set(60, seed=3)
    feats = count_features(shares)
    stretched = feats.copy()
    stretched[:, 0] = 1000.0 * stretched[:, 0] + 5.0
    stretched[:, 1] = 4.0  # constant: no information, and no division by zero
    feats[:, 1] = -7.0
    a, b = np.asarray(fit_count_classifier(feats, counts)), np.asarray(fit_count_classifier(stretched, counts))
    np.testing.assert_allclose(feats @ a[:, :-1].T + a[:, -1], stretched @ b[:, :-1].T + b[:, -1], rtol=1e-6, atol=1e-6)
    assert np.allclose(b[:, 1], 0.0) and np.allclose(b[:, 0] * 1000.0, a[:, 0])


def test_count_shares_puts_each_powers_shares_side_by_side(monkeypatch):
    rng = np.random.default_rng(5)
    emb = rng.standard_normal((300, TINY["emb_dim"]))
    energy = rng.exponential(size=300)
    both = count_shares(emb, energy, [2.0, 0.0])
    np.testing.assert_array_equal(both, np.concatenate([embedding_shares(emb, energy, 2.0),
                                                        embedding_shares(emb, energy, 0.0)]))
    np.testing.assert_array_equal(count_shares(emb, energy, 2.0), embedding_shares(emb, energy, 2.0))
    assert not np.allclose(both[:TINY["emb_dim"]], both[TINY["emb_dim"]:])  # the weighting matters here
    # a two-power counter reads exactly these features: its decision is the hand-made one
    shares, counts = _synthetic_counting_set(30, seed=6)
    coef = fit_count_classifier(count_features(np.hstack([shares, shares[:, ::-1]])), counts)
    assert np.asarray(coef).shape == (3, 2 * TINY["emb_dim"] + 1)
    model = tiny(auto_method="logistic", auto_logistic=coef, auto_power=[2, 0])
    assert model.config.auto_power == [2.0, 0.0] and model.config.count_powers == [2.0, 0.0]
    for n_src in (1, 2, 3):
        ref = noise_sources(1, n_src, 4000, seed=60 + n_src)
        monkeypatch.setattr(model, "embed", oracle_embed(ref, TINY["emb_dim"], noise=0.3, seed=n_src))
        emb_b, energy_b = model.active_bins(ref.sum(1))[0]
        by_hand = clusters.classify_counts(count_features(count_shares(emb_b, energy_b, [2.0, 0.0])[None]), coef, 4)
        assert model.count_speakers(ref.sum(1)) == by_hand


def test_logistic_counter_end_to_end_and_on_digital_silence(monkeypatch):
    shares, counts = _synthetic_counting_set(60, seed=2)
    coef = fit_count_classifier(count_features(shares), counts)
    model = tiny(auto_method="logistic", auto_logistic=coef, auto_power=2.0)
    for n_src, gains_db in [(1, [0.0]), (2, [0.0, -3.0]), (3, [0.0, -2.0, -4.0])]:
        ref = noise_sources(1, n_src, 4000, seed=40 + n_src, gains_db=gains_db)
        mix = ref.sum(1)
        monkeypatch.setattr(model, "embed", oracle_embed(ref, TINY["emb_dim"], noise=0.25, seed=n_src))
        assert model.count_speakers(mix) == [n_src]
        assert model.separate(mix, n_src="auto").shape == (1, n_src, 4000)
    monkeypatch.undo()
    assert model.count_speakers(torch.zeros(1, 4000)) == [1]
    clipped = tiny(auto_method="logistic", auto_logistic=coef, auto_max_src=2)
    assert max(clipped.count_from_features(count_features(shares))) == 2


def test_fit_count_classifier_refuses_gaps_and_bad_shapes():
    feats = np.zeros((4, 8))
    with pytest.raises(SepError, match="1..C"):
        fit_count_classifier(feats, np.array([1, 1, 3, 3]))
    with pytest.raises(SepError, match="1..C"):
        fit_count_classifier(feats, np.array([2, 2, 2, 2]))
    with pytest.raises(SepError, match="features"):
        fit_count_classifier(feats, np.array([1, 2, 1]))
    with pytest.raises(SepError, match="classifier"):
        tiny().count_from_features(feats)


# ---------------------------------------------------------------------------- registry


def test_presets_are_registered():
    presets = registry.presets()
    paper = presets["dpcl-paper"]
    assert paper.family == "dpcl"
    assert paper.overrides["layers"] == 4 and paper.overrides["hidden"] == 300
    assert presets["dpcl-hershey2016"].overrides["layers"] == 2
    assert isinstance(registry.build("dpcl-small"), DeepClustering)
    defaults = DeepClusteringConfig()
    assert (defaults.n_fft, defaults.hop, defaults.n_freq, defaults.emb_dim) == (256, 64, 129, 20)


def test_save_load_round_trip(tmp_path):
    coef = np.random.default_rng(5).standard_normal((3, TINY["emb_dim"] + 1)).tolist()
    model = tiny(dropout=0.2, silence_db=35.0, kmeans_seed=3, auto_method="logistic", auto_logistic=coef,
                 auto_power=2.0)
    gen = torch.Generator().manual_seed(13)
    model.set_normalization(torch.randn(N_FREQ, generator=gen), torch.rand(N_FREQ, generator=gen) + 0.5)
    path = tmp_path / "dpcl.safetensors"
    registry.save_model(model, path)
    meta, tensors = registry.read_checkpoint(path)
    assert meta["family"] == "dpcl"
    assert {"feat_mean", "feat_std"} <= set(tensors) and "window" not in tensors
    loaded = registry.load_file(path)
    assert isinstance(loaded, DeepClustering) and loaded.config == model.config
    assert not loaded.training
    assert torch.equal(loaded.feat_mean, model.feat_mean) and torch.equal(loaded.feat_std, model.feat_std)
    mix = noise_sources(2, 3, 2500, seed=14).sum(1)
    assert torch.equal(loaded.embed(mix), model.embed(mix))
    assert torch.equal(loaded.separate(mix, n_src=3), model.separate(mix, n_src=3))
    assert loaded.count_speakers(mix) == model.count_speakers(mix)


def test_loss_ignores_silent_reference_rows():
    # Mixed speaker-count batches pad references with silent rows
    # (speaker_counts in training recipes): they must change nothing.
    torch.manual_seed(0)
    model = registry.build("dpcl", hidden=8, layers=1, emb_dim=4)
    ref = 0.1 * torch.randn(2, 2, 4000)
    mix = ref.sum(1)
    padded = torch.cat([ref, torch.zeros(2, 1, 4000)], dim=1)  # [B, 3, T]
    base = model.compute_loss(mix, ref)
    assert torch.allclose(model.compute_loss(mix, padded), base, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(model.compute_loss(mix, ref[:, [0, 0]]), base)  # the loss does see the references
    assert model.accepts_silent_sources


@pytest.mark.parametrize("weight", [0.02, 0.5])
def test_signal_term_is_minus_si_snr_of_soft_masks_around_the_sources_centroids(monkeypatch, weight):
    """With embeddings that encode the ideal binary mask (one orthonormal direction
    per speaker) the deep clustering term is 0 and each source's centroid is its
    own direction: a bin keeps 1 / (1 + e^(-2 / T)) for the speaker that owns it.
    The loss must be sa_weight times minus the mean SI-SNR of those tracks,
    computed here with the reference STFT and the numpy metric."""
    from sepcli.metrics import si_snr

    temperature = 0.5
    model = tiny(mask_temperature=temperature, sa_weight=weight, kmeans_power=2.0)
    ref = noise_sources(2, 2, 4000, seed=8, gains_db=[0.0, -3.0])
    mix = ref.sum(1)
    labels = ibm_labels(ref)  # [B, K, F]
    monkeypatch.setattr(model, "_embed_spec", lambda spec: nnf.one_hot(labels, TINY["emb_dim"]).float())
    own = 1.0 / (1.0 + np.exp(-2.0 / temperature))
    masks = torch.where(nnf.one_hot(labels, 2).bool(), own, 1.0 - own)  # [B, K, F, S]
    spec = ref_stft(mix)  # [B, F, K]
    est = torch.stack([ref_istft(spec * masks[..., s].transpose(1, 2), 4000) for s in range(2)], dim=1)  # [B, S, T]
    want = -weight * si_snr(est.numpy().astype(np.float64), ref.numpy().astype(np.float64)).mean()
    torch.testing.assert_close(model.compute_loss(mix, ref).double(), torch.tensor(want, dtype=torch.float64),
                               rtol=1e-4, atol=1e-4)
    # A silent third reference (mixed speaker counts) has no centroid and no score.
    padded = torch.cat([ref, torch.zeros(2, 1, 4000)], dim=1)  # [B, 3, T]
    torch.testing.assert_close(model.compute_loss(mix, padded), model.compute_loss(mix, ref), rtol=1e-5, atol=1e-5)


def test_signal_term_trains_the_network():
    model = tiny(mask_temperature=0.5, sa_weight=0.05)
    plain = tiny(mask_temperature=0.5)
    ref = noise_sources(2, 2, 2000, seed=2)
    loss = model.compute_loss(ref.sum(1), ref)
    loss.backward()
    plain_loss = plain.compute_loss(ref.sum(1), ref)
    plain_loss.backward()
    assert torch.isfinite(loss) and not torch.allclose(loss, plain_loss)
    assert not torch.allclose(model.proj.weight.grad, plain.proj.weight.grad)

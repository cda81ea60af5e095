"""Deep Clustering (Hershey et al., ICASSP 2016) with the DPCL++ network of
Isik et al., Interspeech 2016.

A BLSTM stack maps the normalised log-magnitude STFT of the mixture to one
unit-norm D-dimensional embedding per time-frequency bin, trained so that bins
dominated by the same speaker point the same way and bins of different speakers
are orthogonal (:func:`sepcli.losses.deep_clustering_loss`). At inference
k-means groups the embeddings into ``n_src`` clusters; each cluster is a mask
on the mixture STFT (mixture phase), inverted with the iSTFT. The masks are
binary as in the paper (``mask_temperature = 0``) or soft: each bin shared
between the centroids by ``softmax(-|v - mu|^2 / mask_temperature)``.

Because the number of clusters is chosen at inference, a model trained on
2-speaker mixtures can be asked for 3 speakers (``separate(mix, n_src=3)``), or
for an estimate (``n_src="auto"``, see :meth:`DeepClustering.count_speakers`).

Choices worth knowing:

* Silent bins (more than ``silence_db`` below the loudest bin of the mixture)
  get zero weight in the loss and are left out when the k-means centroids are
  fitted, because their embeddings carry no speaker evidence. For
  reconstruction every bin, silent or not, is then given to its nearest
  centroid (or shared among them): each bin's masks sum to 1, so the output
  tracks always sum to the input mixture (the iSTFT is linear), and nothing is
  thrown away.
* Soft masks (``mask_temperature > 0``) split the bins whose embedding sits
  between two centroids instead of betting the whole bin on one; that is where
  binary masks go wrong on voices and channels the network has not heard. The
  shipped ``dpcl`` uses 0.5, chosen on the validation speakers
  (docs/experiments.md, "Soft masks for dpcl").
* Tracks come out loudest first (by the mixture energy in each cluster), which
  makes the order deterministic and meaningful.
* k-means is fitted on at most ``kmeans_max_bins`` randomly chosen non-silent
  bins (seeded), then every bin is assigned, so time and memory of the
  clustering stay bounded for long inputs.
* ``kmeans_power`` p weighs each bin by its mixture magnitude to the power p
  in the centroid fit (0: every non-silent bin counts the same, as in Hershey
  et al. 2016). Loud bins carry most of each track's energy, and with three
  or more speakers the many quiet bins otherwise pull the centroids away from
  them.

Shape legend: B batch, S sources, T samples, F frequency bins, K frames,
D embedding dim.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as nnf
from torch import nn

from sepcli.errors import SepError
from sepcli.inference.equalize import preset_limit
from sepcli.inference.settings import InferenceSettings
from sepcli.losses import deep_clustering_loss, oracle_soft_masks
from sepcli.metrics import si_snr_torch
from sepcli.models.common import ConfigMembers, check_mix, one_pass_presets
from sepcli.models.deep_clustering_clusters import (
    AUTO_METHODS,
    COUNT_FEATURE_FLOOR,  # noqa: F401  (its old home)
    REMOVED_AUTO_METHODS,
    classify_counts,
    cluster_bins,
    cluster_masks,
    count_features,
    count_from_shares,
    count_shares,
    embedding_shares,
    fit_count_classifier,
)
from sepcli.models.deep_clustering_features import LogMagnitudeFeatures
from sepcli.registry import register, register_preset

log = logging.getLogger(__name__)


@dataclass
class DeepClusteringConfig:
    """Hyper-parameters of a deep clustering model.

    Defaults: 8 kHz, 32 ms sqrt-Hann window with 8 ms hop (129 bins), 4 BLSTM
    layers of 300 units per direction, D = 20.
    """

    sample_rate: int = 8000
    n_src: int = 2  # default number of clusters at inference
    n_fft: int = 256  # window and FFT length in samples (32 ms at 8 kHz)
    hop: int = 64  # frame shift in samples (8 ms at 8 kHz)
    hidden: int = 300  # BLSTM units per direction
    layers: int = 4  # BLSTM layers
    emb_dim: int = 20  # D
    dropout: float = 0.0  # between BLSTM layers and before the embedding layer
    silence_db: float = 40.0  # bins this far below the mixture's loudest bin are silent
    kmeans_seed: int = 0
    kmeans_max_bins: int = 20000  # bins used to fit the centroids (random subsample)
    kmeans_n_init: int = 3
    kmeans_power: float = 0.0  # fit weight of a bin: |mixture bin| ** kmeans_power (0: unweighted)
    mask_temperature: float = 0.0  # 0: binary masks (the paper's); > 0: softmax(-|v - mu|^2 / T) masks
    sa_weight: float = 0.0  # training: weight per dB of the soft masks' SI-SNR term (compute_loss); 0: off
    auto_max_src: int = 4  # upper bound of the estimate for n_src="auto"
    auto_method: str = "eigen"  # how n_src="auto" counts: "eigen" or "logistic"
    auto_threshold: float = 0.1  # "eigen": eigenvalue share that counts as a speaker
    # "eigen"/"logistic": shares weigh each bin by |mixture bin| ** auto_power; "logistic"
    # may read a list of powers, one set of D shares per power side by side (count_shares)
    auto_power: float | list[float] = 0.0
    # "logistic": [C, P * D + 1] rows of a multinomial logistic regression over
    # count_features (last column the intercept; P powers); row c scores c + 1 speakers.
    # Fitted by fit_count_classifier on training speakers' mixtures.
    auto_logistic: list | None = None

    # The deleted "silhouette" counter's settings: old checkpoints and cards
    # name them, and load with them ignored (registry.make_config).
    LEGACY_KEYS: ClassVar[tuple[str, ...]] = ("auto_silhouette", "auto_silhouette_bins")

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise SepError(f"bad dpcl config: {what}")

        for name in ("sample_rate", "n_src", "n_fft", "hop", "hidden", "layers", "emb_dim",
                     "kmeans_max_bins", "kmeans_n_init", "auto_max_src"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                 f"{name} must be a positive integer, got {value!r}")
        need(self.n_fft >= 4, f"n_fft must be at least 4, got {self.n_fft}")
        # sqrt-Hann analysis + synthesis needs at least 2x overlap to invert.
        need(self.hop <= self.n_fft // 2, f"hop ({self.hop}) must be at most n_fft/2 ({self.n_fft // 2})")
        need(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        need(self.silence_db > 0, f"silence_db must be positive, got {self.silence_db}")
        need(isinstance(self.kmeans_power, (int, float)) and not isinstance(self.kmeans_power, bool)
             and 0.0 <= self.kmeans_power <= 4.0,
             f"kmeans_power must be a number in [0, 4], got {self.kmeans_power!r}")
        need(isinstance(self.mask_temperature, (int, float)) and not isinstance(self.mask_temperature, bool)
             and 0.0 <= self.mask_temperature <= 100.0,
             f"mask_temperature must be a number in [0, 100], got {self.mask_temperature!r}")
        need(isinstance(self.sa_weight, (int, float)) and not isinstance(self.sa_weight, bool)
             and 0.0 <= self.sa_weight <= 1.0, f"sa_weight must be a number in [0, 1], got {self.sa_weight!r}")
        need(self.sa_weight == 0.0 or self.mask_temperature > 0.0,
             "sa_weight > 0 trains soft masks: it needs mask_temperature > 0")
        need(isinstance(self.kmeans_seed, int), f"kmeans_seed must be an integer, got {self.kmeans_seed!r}")
        need(0.0 < self.auto_threshold < 1.0, f"auto_threshold must be in (0, 1), got {self.auto_threshold}")
        need(self.auto_method not in REMOVED_AUTO_METHODS,
             f"auto_method {self.auto_method!r} was removed; use one of {', '.join(AUTO_METHODS)}")
        need(self.auto_method in AUTO_METHODS,
             f"auto_method must be one of {', '.join(AUTO_METHODS)}, got {self.auto_method!r}")
        need(self.kmeans_max_bins >= self.auto_max_src, "kmeans_max_bins must be at least auto_max_src")
        powers = self.auto_power if isinstance(self.auto_power, (list, tuple)) else [self.auto_power]
        need(len(powers) >= 1 and all(isinstance(p, (int, float)) and not isinstance(p, bool) and 0.0 <= p <= 4.0
                                      for p in powers),
             f"auto_power must be a number in [0, 4] or a list of them, got {self.auto_power!r}")
        if isinstance(self.auto_power, (list, tuple)):
            self.auto_power = [float(p) for p in self.auto_power]  # plain lists: JSON in checkpoints and cards
        need(self.auto_method != "eigen" or len(powers) == 1,
             f"auto_method 'eigen' reads one set of shares: auto_power must be one number, got {self.auto_power!r}")
        n_features = self.emb_dim * len(powers)
        if self.auto_logistic is not None:
            try:
                coef = np.asarray(self.auto_logistic, dtype=np.float64)
            except (TypeError, ValueError):
                coef = np.zeros(0)
            need(coef.ndim == 2 and coef.shape[0] >= 2 and coef.shape[1] == n_features + 1
                 and bool(np.isfinite(coef).all()),
                 f"auto_logistic must be finite [C >= 2, emb_dim x powers + 1 = {n_features + 1}] rows of numbers")
            self.auto_logistic = coef.tolist()  # plain lists: JSON in checkpoints and cards
        need(self.auto_method != "logistic" or self.auto_logistic is not None,
             "auto_method 'logistic' needs auto_logistic (fit it with fit_count_classifier)")

    @property
    def count_powers(self) -> list[float]:
        """``auto_power`` as a list (P powers, one set of shares each)."""
        return list(self.auto_power) if isinstance(self.auto_power, list) else [float(self.auto_power)]

    @property
    def n_freq(self) -> int:
        """F, the number of STFT bins."""
        return self.n_fft // 2 + 1


@register("dpcl", DeepClusteringConfig)
class DeepClustering(LogMagnitudeFeatures, ConfigMembers, nn.Module):
    """Deep clustering separator (see the module docstring).

    ``forward(mix)`` and ``separate(mix, n_src)`` separate; ``embed(mix)`` gives
    the embeddings the loss trains; ``compute_loss(mix, ref)`` is the training
    loss. Feature normalisation (per-frequency mean and std of the log
    magnitude) lives in the buffers ``feat_mean`` / ``feat_std``, saved with the
    weights; set them with :meth:`fit_normalization` or :meth:`set_normalization`
    before training (default: identity).
    """

    config: DeepClusteringConfig

    accepts_silent_sources: bool = True
    """The loss takes references with silent rows (they own no bins), so one
    batch can mix speaker counts (``speaker_counts`` in training recipes)."""

    # -- the SeparationModel protocol (sepcli.inference.protocol)

    causal: bool = False  # the BLSTM runs both ways
    receptive_field: int | None = None  # recurrent: the whole chunk

    def inference_presets(self) -> dict[str, InferenceSettings]:
        """One pass at every quality, 30-s chunks: k-means labels clusters afresh
        in every chunk, and a cluster follows one voice only while the BLSTM has
        context: on 4-s chunks about one chunk in five switched speakers
        part-way, which no alignment between chunks can undo. On the 10-minute
        stitching check (``bench/separate_long.py --stitch-check --model dpcl``)
        16-30 s chunks removed the swaps and scored higher per piece; see
        docs/long-recordings.md. Each chunk is equalized toward training speech's
        spectrum (:func:`sepcli.inference.equalize.preset_limit`)."""
        return one_pass_presets(30.0, equalize=preset_limit(causal=False))

    def streaming_layout(self) -> None:
        return None  # a BLSTM looks ahead

    @property
    def frame_hop(self) -> int:
        """STFT frame shift in samples: the unit of the averaged passes' delays."""
        return self.config.hop

    def __init__(self, config: DeepClusteringConfig) -> None:
        super().__init__()
        self.config = config
        n_freq = config.n_freq
        # Derived from the config, so not saved in checkpoints.
        self.register_buffer(
            "window", torch.hann_window(config.n_fft, periodic=True).sqrt(), persistent=False
        )
        self.register_buffer("feat_mean", torch.zeros(n_freq))
        self.register_buffer("feat_std", torch.ones(n_freq))
        self.blstm = nn.LSTM(
            input_size=n_freq,
            hidden_size=config.hidden,
            num_layers=config.layers,
            batch_first=True,
            bidirectional=True,
            dropout=config.dropout if config.layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(config.dropout)
        self.proj = nn.Linear(2 * config.hidden, n_freq * config.emb_dim)

    # ------------------------------------------------------------------ input checks

    def _as_batch(self, mix: torch.Tensor) -> torch.Tensor:
        """Accept ``[B, T]`` or ``[B, 1, T]``; return ``[B, T]`` on the model's device and dtype."""
        mix = check_mix(mix)
        if not torch.isfinite(mix).all():
            raise SepError("mix contains NaN or infinite samples")
        return mix.to(device=self.window.device, dtype=self.window.dtype)

    def _resolve_n_src(self, n_src: int | str | None) -> int | str:
        """``None`` -> config default, ``"auto"`` kept, ints (or digit strings) checked."""
        if n_src is None:
            return self.config.n_src
        if isinstance(n_src, str):
            text = n_src.strip().lower()
            if text == "auto":
                return "auto"
            if not text.isdigit():
                raise SepError(f"n_src must be a positive integer or 'auto', got {n_src!r}")
            n_src = int(text)
        if isinstance(n_src, bool) or not isinstance(n_src, (int, np.integer)) or n_src < 1:
            raise SepError(f"n_src must be a positive integer or 'auto', got {n_src!r}")
        return int(n_src)

    # ------------------------------------------------------------------ signal processing

    def stft(self, wav: torch.Tensor) -> torch.Tensor:
        """Complex STFT (sqrt-Hann, centred with zero padding, so any length works).

        Shape: [N, T] -> [N, F, K] with K = 1 + T // hop.
        """
        return torch.stft(
            wav,
            n_fft=self.config.n_fft,
            hop_length=self.config.hop,
            win_length=self.config.n_fft,
            window=self.window,
            center=True,
            pad_mode="constant",
            return_complex=True,
        )

    def istft(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        """Inverse of :meth:`stft`, exactly ``length`` samples.

        Shape: [N, F, K] -> [N, T].
        """
        return torch.istft(
            spec,
            n_fft=self.config.n_fft,
            hop_length=self.config.hop,
            win_length=self.config.n_fft,
            window=self.window,
            center=True,
            length=length,
        )

    def silence_weight(self, spec: torch.Tensor) -> torch.Tensor:
        """1 for bins within ``silence_db`` of the mixture's loudest bin, else 0.

        Per item; digital silence gives all zeros. Shape: [B, F, K] -> [B, K, F].
        """
        mag = spec.abs()  # [B, F, K]
        peak = mag.amax(dim=(1, 2), keepdim=True)  # [B, 1, 1]
        floor = peak * 10.0 ** (-self.config.silence_db / 20.0)
        # Strict '>' so an all-zero item (peak 0) has no active bin.
        return (mag > floor).to(mag.dtype).transpose(1, 2)

    # ------------------------------------------------------------------ network

    def embed(self, mix: torch.Tensor) -> torch.Tensor:
        """Unit-norm embedding of every time-frequency bin.

        Shape: [B, T] -> [B, K, F, D].
        """
        return self._embed_spec(self.stft(self._as_batch(mix)))

    def _embed_spec(self, spec: torch.Tensor) -> torch.Tensor:
        """Shape: [B, F, K] complex -> [B, K, F, D]."""
        batch, n_freq, n_frames = spec.shape
        feats = self._features_from_spec(spec)  # [B, K, F]
        hidden, _ = self.blstm(feats)  # [B, K, 2*hidden]
        emb = torch.tanh(self.proj(self.drop(hidden)))  # [B, K, F*D]
        emb = emb.view(batch, n_frames, n_freq, self.config.emb_dim)  # [B, K, F, D]
        return nnf.normalize(emb, dim=-1, eps=1e-8)

    def compute_loss(self, mix: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """Deep clustering loss against the sources' ideal binary mask.

        Y assigns each bin to the source with the largest STFT magnitude;
        bins more than ``silence_db`` below the mixture's peak get weight 0.
        ``sa_weight`` > 0 adds that times minus the mean SI-SNR (dB) of the soft
        masks around the sources' own centroids (:func:`~sepcli.losses.oracle_soft_masks`),
        what the soft-mask inference reads; silent references are left out.

        Shape: mix [B, T], ref [B, S, T] -> scalar.
        """
        mix = self._as_batch(mix)
        if not isinstance(ref, torch.Tensor) or ref.dim() != 3 or ref.shape[0] != mix.shape[0] \
                or ref.shape[2] != mix.shape[1] or ref.shape[1] < 1:
            got = tuple(ref.shape) if isinstance(ref, torch.Tensor) else type(ref).__name__
            raise SepError(f"ref must have shape [B, S, T] = [{mix.shape[0]}, S, {mix.shape[1]}], got {got}")
        batch, n_src, length = ref.shape
        spec = self.stft(mix)  # [B, F, K]
        n_freq, n_frames = spec.shape[1:]
        ref_mag = self.stft(ref.reshape(batch * n_src, length).to(mix)).abs()  # [B*S, F, K]
        ref_mag = ref_mag.view(batch, n_src, n_freq, n_frames)  # [B, S, F, K]
        # One-hot of the loudest source (first one on ties); argmax + one_hot is
        # ~6x slower on CPU for this layout.
        loudest = ref_mag == ref_mag.amax(dim=1, keepdim=True)  # [B, S, F, K]
        loudest &= loudest.cumsum(dim=1) == 1
        target = loudest.permute(0, 3, 2, 1).reshape(batch, n_frames * n_freq, n_src)  # [B, KF, S]
        weight = self.silence_weight(spec).reshape(batch, n_frames * n_freq)  # [B, KF]
        emb = self._embed_spec(spec)  # [B, K, F, D]
        emb = emb.reshape(batch, n_frames * n_freq, self.config.emb_dim)  # [B, KF, D]
        loss = deep_clustering_loss(emb, target.to(emb.dtype), weight)
        if self.config.sa_weight > 0:
            loss = loss + self.config.sa_weight * self._signal_loss(spec, emb, target, weight, ref)
        return loss

    def _signal_loss(self, spec: torch.Tensor, emb: torch.Tensor, target: torch.Tensor,
                     weight: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """Minus the mean SI-SNR (dB) over present sources of the oracle-centroid soft masks' tracks.
        Shape: spec [B, F, K], emb [B, KF, D], target [B, KF, S], weight [B, KF], ref [B, S, T] -> scalar."""
        (batch, n_freq, n_frames), (n_src, length) = spec.shape, ref.shape[1:]
        # Centroids weighted as inference's k-means weighs bins: |X| ** kmeans_power.
        mag = spec.abs().transpose(1, 2).reshape(batch, n_frames * n_freq)  # [B, KF]
        fit = weight * (mag / mag.amax(1, keepdim=True).clamp_min(1e-12)) ** self.config.kmeans_power
        masks, present = oracle_soft_masks(emb.float(), target, fit.float(), float(self.config.mask_temperature))
        masks = masks.view(batch, n_frames, n_freq, n_src).permute(0, 3, 2, 1)  # [B, S, F, K]
        est = self.istft((spec.unsqueeze(1) * masks).reshape(batch * n_src, n_freq, n_frames), length)  # [B*S, T]
        snr = si_snr_torch(est.view(batch, n_src, length), ref.to(est))  # [B, S]
        return -(snr * present).sum() / present.sum().clamp_min(1)

    # ------------------------------------------------------------------ inference

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """Separate into ``config.n_src`` tracks. Shape: [B, T] -> [B, S, T]."""
        return self.separate(mix)

    def count_speakers(self, mix: torch.Tensor, *, seed: int | None = None) -> list[int]:
        """Estimate the number of speakers of each mixture from its embeddings.

        ``auto_method="eigen"``: the eigenvalue shares (:meth:`eigen_shares`)
        above ``auto_threshold``. ``"logistic"``: the most likely count under
        the classifier ``auto_logistic`` over :func:`count_features` of the
        shares. Clipped to ``[1, auto_max_src]``; digital silence counts as 1.
        ``seed`` is accepted for the callers that pass k-means' seed; counting
        itself draws nothing.

        Shape: [B, T] -> B ints.
        """
        return [self.count_from_bins(emb, energy) for emb, energy in self.active_bins(mix)]

    def active_bins(self, mix: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each mixture's non-silent bins (the ones clustering and counting look
        at): their embeddings and mixture energies |X|^2.

        Shape: [B, T] -> B pairs (emb [N_b, D] float32, energy [N_b] float64).
        """
        mix = self._as_batch(mix)
        with torch.no_grad():
            spec = self.stft(mix)  # [B, F, K]
            emb = self.embed(mix)  # [B, K, F, D]
            weight = self.silence_weight(spec)  # [B, K, F]
        batch, dim = mix.shape[0], emb.shape[-1]
        emb = emb.reshape(batch, -1, dim).float().cpu().numpy()  # [B, KF, D]
        active = weight.reshape(batch, -1).cpu().numpy() > 0  # [B, KF]
        energy = spec.abs().square().transpose(1, 2).reshape(batch, -1).double().cpu().numpy()  # [B, KF]
        return [(emb[b][active[b]], energy[b][active[b]]) for b in range(batch)]

    def active_embeddings(self, mix: torch.Tensor) -> list[np.ndarray]:
        """Embeddings of each mixture's non-silent bins (:meth:`active_bins`
        without the energies). Shape: [B, T] -> B arrays [N_b, D] (float32)."""
        return [emb for emb, _energy in self.active_bins(mix)]

    def count_from_bins(self, emb: np.ndarray, energy: np.ndarray, seed: int | None = None) -> int:
        """Speaker count from one mixture's non-silent bins (:meth:`active_bins`)
        with the config's ``auto_method`` (``seed``: unused, kept for callers).
        Shape: emb [N, D], energy [N] -> int."""
        if emb.shape[0] == 0:
            return 1  # digital silence: nothing to count
        share = count_shares(emb, energy, self.config.count_powers)  # [P * D]
        if self.config.auto_method == "logistic":
            return self.count_from_features(count_features(share[None]))[0]
        return count_from_shares(share, self.config.auto_threshold, self.config.auto_max_src)

    def count_from_features(self, features: np.ndarray) -> list[int]:
        """``auto_method="logistic"``'s decision (:func:`classify_counts` with
        ``auto_logistic``). Shape: features [M, P * D] (:func:`count_features`) -> M ints.
        """
        if self.config.auto_logistic is None:
            raise SepError("this dpcl model has no speaker-count classifier (auto_logistic)")
        return classify_counts(features, self.config.auto_logistic, self.config.auto_max_src)

    def eigen_shares(self, mix: torch.Tensor) -> torch.Tensor:
        """Eigenvalues of the non-silent embeddings' second moment, as shares
        (bins weighted by |X| ** ``auto_power``, its first power if it lists
        several; see :func:`embedding_shares`).

        For embeddings that meet the training objective (VVᵀ = YYᵀ) the
        speakers sit on orthonormal directions, so the D×D matrix ``VᵀV / N``
        has one non-zero eigenvalue per speaker, equal to that speaker's share
        of the bins: the eigenvalues of VᵀV are those of the TF×TF affinity
        VVᵀ, so this reads the affinity's rank without forming it. Real
        embeddings spread a little, which adds small eigenvalues.

        Shape: [B, T] -> [B, D], descending, each row summing to 1 (all zeros
        for digital silence).
        """
        power = self.config.count_powers[0]
        return torch.stack([torch.from_numpy(embedding_shares(emb, energy, power))
                            for emb, energy in self.active_bins(mix)])

    def _cluster(self, emb: np.ndarray, active: np.ndarray, energy: np.ndarray,
                 n_src: int, seed: int) -> np.ndarray:
        """:func:`~sepcli.models.deep_clustering_clusters.cluster_bins` with this config's k-means
        settings. Shape: emb [N, D], active [N] bool, energy [N] -> labels [N]."""
        cfg = self.config
        return cluster_bins(emb, active, energy, n_src, seed, max_bins=cfg.kmeans_max_bins,
                            n_init=cfg.kmeans_n_init, power=float(cfg.kmeans_power))

    def _masks(self, emb: np.ndarray, active: np.ndarray, energy: np.ndarray,
               n_src: int, seed: int) -> np.ndarray:
        """:func:`~sepcli.models.deep_clustering_clusters.cluster_masks` with this config's
        settings. Shape: emb [N, D], active [N] bool, energy [N] -> masks [N, S]."""
        cfg = self.config
        return cluster_masks(emb, active, energy, n_src, seed, max_bins=cfg.kmeans_max_bins,
                             n_init=cfg.kmeans_n_init, power=float(cfg.kmeans_power),
                             temperature=float(cfg.mask_temperature))

    def separate(
        self, mix: torch.Tensor, n_src: int | str | None = None, *, seed: int | None = None
    ) -> torch.Tensor:
        """Separate each mixture into ``n_src`` tracks by k-means on the embeddings
        (binary or soft masks: ``config.mask_temperature``).

        Args:
            mix: mixtures. Shape: [B, T] or [B, 1, T].
            n_src: number of speakers; ``None`` for ``config.n_src``; ``"auto"``
                to estimate it per mixture (:meth:`count_speakers`). With
                ``"auto"`` and several mixtures of different counts, the
                shorter ones are padded with silent tracks to the largest count.
            seed: k-means seed (default ``config.kmeans_seed``); the output is
                deterministic for a given seed.

        Returns:
            Masked tracks, loudest first, exactly T samples; they sum to
            the mixture. Shape: [B, S, T].
        """
        mix = self._as_batch(mix)
        want = self._resolve_n_src(n_src)
        seed = self.config.kmeans_seed if seed is None else int(seed)
        batch, length = mix.shape
        dim = self.config.emb_dim
        with torch.no_grad():
            spec = self.stft(mix)  # [B, F, K]
            n_freq, n_frames = spec.shape[1:]
            # Through the public embed() (one extra, cheap STFT) so subclasses
            # and tests can substitute the embeddings.
            emb = self.embed(mix)  # [B, K, F, D]
            weight = self.silence_weight(spec)  # [B, K, F]
        emb_np = emb.reshape(batch, n_frames * n_freq, dim).float().cpu().numpy()  # [B, KF, D]
        active_np = weight.reshape(batch, n_frames * n_freq).cpu().numpy() > 0  # [B, KF]
        energy_np = spec.abs().square().transpose(1, 2).reshape(batch, -1).double().cpu().numpy()  # [B, KF]

        counts = []
        masks_np = []
        for b in range(batch):
            if want == "auto":
                count = self.count_from_bins(emb_np[b][active_np[b]], energy_np[b][active_np[b]], seed)
            else:
                count = int(want)
            counts.append(count)
            masks_np.append(self._masks(emb_np[b], active_np[b], energy_np[b], count, seed))  # [KF, S_b]
        n_out = max(counts)
        if len(set(counts)) > 1:
            log.warning(
                "estimated speaker counts differ across the batch (%s); padding with silent tracks to %d",
                counts, n_out,
            )
        # A mixture with fewer speakers than the batch's most gets silent tracks (zero masks).
        masks_np = [np.pad(m, ((0, 0), (0, n_out - m.shape[1]))) for m in masks_np]
        masks = torch.from_numpy(np.stack(masks_np)).to(device=spec.device, dtype=spec.real.dtype)  # [B, KF, S]
        masks = masks.view(batch, n_frames, n_freq, n_out).permute(0, 3, 2, 1)  # [B, S, F, K]
        masked = spec.unsqueeze(1) * masks  # [B, S, F, K]
        est = self.istft(masked.reshape(batch * n_out, n_freq, n_frames), length)  # [B*S, T]
        return est.view(batch, n_out, length)


register_preset(
    "dpcl-hershey2016",
    "dpcl",
    "Hershey et al. 2016: 2 BLSTM layers (300 units per direction), D = 40",
    layers=2, hidden=300, emb_dim=40, dropout=0.0,
)
register_preset(
    "dpcl-paper",
    "dpcl",
    "Isik et al. 2016 (DPCL++): 4 BLSTM layers (300 units per direction), D = 40, "
    "dropout 0.5 between layers (the paper's recurrent dropout is not used)",
    layers=4, hidden=300, emb_dim=40, dropout=0.5,
)
register_preset(
    "dpcl-small",
    "dpcl",
    "CPU-friendly: 2 BLSTM layers of 128 units per direction, D = 20",
    layers=2, hidden=128, emb_dim=20, dropout=0.1,
)

__all__ = ["DeepClustering", "DeepClusteringConfig", "count_features", "count_shares", "embedding_shares",
           "fit_count_classifier"]

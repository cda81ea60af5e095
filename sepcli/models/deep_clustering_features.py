"""Deep clustering's network input: the log-magnitude STFT, normalised per
frequency with statistics fitted on training mixtures (a mixin of
:class:`sepcli.models.deep_clustering.DeepClustering`, which holds the
``feat_mean`` / ``feat_std`` buffers, ``stft`` and ``config``).

Shape legend: B batch, T samples, F frequency bins, K frames.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch

from sepcli.errors import SepError

# Floor inside the log of the magnitude: keeps digital silence finite
# (log(1e-8) ≈ -18) instead of -inf.
_LOG_EPS = 1e-8


class LogMagnitudeFeatures:
    """Normalised log-magnitude features and the fitting of their normalisation."""

    def _log_magnitude(self, spec: torch.Tensor) -> torch.Tensor:
        """Un-normalised log magnitude, frames first. Shape: [B, F, K] -> [B, K, F]."""
        return torch.log(spec.abs() + _LOG_EPS).transpose(1, 2)

    def features(self, mix: torch.Tensor) -> torch.Tensor:
        """Normalised log-magnitude features, the network input.

        Shape: [B, T] -> [B, K, F].
        """
        return self._features_from_spec(self.stft(self._as_batch(mix)))

    def _features_from_spec(self, spec: torch.Tensor) -> torch.Tensor:
        return (self._log_magnitude(spec) - self.feat_mean) / self.feat_std  # [B, K, F]

    def set_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Set the per-frequency mean and std of the log-magnitude features.

        Shape: mean [F], std [F] (std > 0).
        """
        n_freq = self.config.n_freq
        mean = torch.as_tensor(mean, dtype=self.feat_mean.dtype)
        std = torch.as_tensor(std, dtype=self.feat_std.dtype)
        if mean.shape != (n_freq,) or std.shape != (n_freq,):
            raise SepError(
                f"normalisation mean and std must have shape [{n_freq}], "
                f"got {tuple(mean.shape)} and {tuple(std.shape)}"
            )
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
            raise SepError("normalisation mean must be finite and std finite and positive")
        with torch.no_grad():
            self.feat_mean.copy_(mean)
            self.feat_std.copy_(std)

    def fit_normalization(self, mixes: Iterable[torch.Tensor], min_std: float = 1e-3) -> int:
        """Set ``feat_mean`` / ``feat_std`` from training mixtures.

        Statistics run over every frame that is not digitally silent (zero
        padding would otherwise drag the mean towards log(eps)).

        Args:
            mixes: tensors of shape [T], [B, T] or [B, 1, T], e.g. a data loader's mixtures.
            min_std: floor for the std of near-constant bins.

        Returns:
            The number of frames the statistics were computed from.
        """
        n_freq = self.config.n_freq
        total = 0
        acc = torch.zeros(n_freq, dtype=torch.float64)
        acc_sq = torch.zeros(n_freq, dtype=torch.float64)
        with torch.no_grad():
            for mix in mixes:
                if isinstance(mix, torch.Tensor) and mix.dim() == 1:
                    mix = mix[None]  # [1, T]
                spec = self.stft(self._as_batch(mix))  # [B, F, K]
                logmag = self._log_magnitude(spec)  # [B, K, F]
                voiced = spec.abs().amax(dim=1) > 0  # [B, K]
                frames = logmag[voiced].double().cpu()  # [N, F]
                total += frames.shape[0]
                acc += frames.sum(0)
                acc_sq += frames.square().sum(0)
        if total == 0:
            raise SepError("fit_normalization: no non-silent frames in the given mixtures")
        mean = acc / total
        std = (acc_sq / total - mean.square()).clamp_min(0).sqrt().clamp_min(min_std)
        self.set_normalization(mean.float(), std.float())
        return total


__all__ = ["LogMagnitudeFeatures"]

"""Deep clustering's inference on the embeddings: k-means into tracks and
speaker counting (``n_src="auto"``), apart from the network in
:mod:`sepcli.models.deep_clustering`.

Counting reads the eigenvalue shares of the embeddings' second moment
(:func:`embedding_shares`): ``auto_method="eigen"`` counts the shares above a
threshold (what a model without a fitted classifier uses), ``"logistic"``
scores :func:`count_features` of the shares (at one or more weighting powers,
:func:`count_shares`) with a multinomial logistic
regression fitted on training speakers' mixtures (:func:`fit_count_classifier`,
``recipes/dpcl_counter.py``; the shipped dpcl's).

Shape legend: N bins, D embedding dim, P weighting powers, M mixtures, C counts.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from sepcli.errors import SepError

AUTO_METHODS = ("eigen", "logistic")
"""Speaker-count estimators for ``n_src="auto"`` (``auto_method`` of the config)."""

REMOVED_AUTO_METHODS = ("silhouette",)
"""Estimators that were deleted: a config naming one is an error that says so."""

COUNT_FEATURE_FLOOR = 1e-4
"""Floor inside the log of the eigenvalue shares that ``auto_method="logistic"``
reads (:func:`count_features`): the smallest shares carry information (how far
the embeddings spread), but an exact zero must stay finite."""


def fit_centroids(emb: np.ndarray, active: np.ndarray, energy: np.ndarray, n_src: int, seed: int, *,
                  max_bins: int, n_init: int, power: float) -> tuple[np.ndarray, np.ndarray]:
    """k-means centroids of the embeddings and each bin's nearest one, loudest cluster first.

    Centroids are fitted on (a seeded subsample of at most ``max_bins``)
    non-silent bins, each weighted by its magnitude to the power ``power``.
    "Loudest" is the mixture energy of the bins nearest to each centroid,
    silent bins included.

    Shape: emb [N, D], active [N] bool, energy [N] (|X|^2) -> centroids [S, D], labels [N].
    """
    from sklearn.cluster import KMeans

    n_bins = emb.shape[0]
    if n_src == 1:
        return emb.mean(0, keepdims=True).astype(np.float64), np.zeros(n_bins, dtype=np.int64)
    if n_src > n_bins:
        raise SepError(f"cannot make {n_src} clusters from {n_bins} time-frequency bins")
    fit_idx = np.flatnonzero(active)
    if fit_idx.size < n_src:
        # Almost silent input: any clustering is as good as another.
        fit_idx = np.arange(n_bins)
    rng = np.random.default_rng(seed)
    if fit_idx.size > max_bins:
        fit_idx = np.sort(rng.choice(fit_idx, size=max_bins, replace=False))
    kmeans = KMeans(n_clusters=n_src, n_init=n_init, random_state=seed)
    weight = None
    if power > 0.0:
        weight = energy[fit_idx] ** (power / 2.0)  # energy is |X|^2
        top = weight.max()
        # relative weights only matter; all-zero ones (a silent fit set) mean unweighted
        weight = weight / top if top > 0 else None
    with warnings.catch_warnings():
        # Fewer distinct points than clusters (e.g. a 1-speaker input asked
        # for 3) is legitimate here; sklearn warns and returns duplicates.
        warnings.simplefilter("ignore")
        kmeans.fit(emb[fit_idx], sample_weight=weight)
        labels = kmeans.predict(emb)
    cluster_energy = np.bincount(labels, weights=energy, minlength=n_src)
    order = np.argsort(-cluster_energy, kind="stable")  # loudest first
    rank = np.empty(n_src, dtype=np.int64)
    rank[order] = np.arange(n_src)
    return kmeans.cluster_centers_[order].astype(np.float64), rank[labels]  # [S, D], [N]


def _scores(emb: np.ndarray, centroids: np.ndarray, temperature: float) -> np.ndarray:
    """-|v - mu_s|^2 / temperature up to a per-bin constant (|v|^2, which a softmax over s
    ignores), in float32: unit-norm embeddings keep the scores small, and a float64 copy of
    every bin's embedding cost more time than the softmax itself.
    Shape: emb [N, D], centroids [S, D] -> [N, S]."""
    mu = centroids.astype(np.float32)  # [S, D]
    return emb.astype(np.float32, copy=False) @ ((2.0 / temperature) * mu.T) - (mu ** 2).sum(1) / temperature


def cluster_bins(emb: np.ndarray, active: np.ndarray, energy: np.ndarray, n_src: int, seed: int, *,
                 max_bins: int, n_init: int, power: float) -> np.ndarray:
    """Label every bin with its nearest :func:`fit_centroids` centroid, in
    ``[0, n_src)``, loudest cluster first.

    Shape: emb [N, D], active [N] bool, energy [N] (|X|^2) -> labels [N].
    """
    return fit_centroids(emb, active, energy, n_src, seed, max_bins=max_bins, n_init=n_init, power=power)[1]


def cluster_masks(emb: np.ndarray, active: np.ndarray, energy: np.ndarray, n_src: int, seed: int, *,
                  max_bins: int, n_init: int, power: float, temperature: float) -> np.ndarray:
    """Masks from the :func:`fit_centroids` centroids, one column per track, loudest first.

    ``temperature`` 0 gives binary masks (each bin to its nearest centroid,
    Hershey et al. 2016); above 0, each bin is shared out as
    ``softmax_s(-|v - mu_s|^2 / temperature)``, the soft k-means assignment
    (the soft k-means that Isik et al. 2016 unfold for end-to-end training). Either way every row sums to 1, so
    the masked tracks sum to the mixture. Bins near the boundary between two
    clusters, where the binary choice is most often wrong, are split instead.

    Shape: emb [N, D], active [N] bool, energy [N] (|X|^2) -> masks [N, S] float32.
    """
    centroids, labels = fit_centroids(emb, active, energy, n_src, seed,
                                      max_bins=max_bins, n_init=n_init, power=power)
    if temperature <= 0.0:
        return np.eye(n_src, dtype=np.float32)[labels]
    masks = _scores(emb, centroids, temperature)  # [N, S] logits, turned into masks in place
    masks -= masks.max(1, keepdims=True)  # exp() of at most 0: no overflow
    np.exp(masks, out=masks)
    masks /= masks.sum(1, keepdims=True)
    return masks


def count_from_shares(share: np.ndarray, threshold: float, max_src: int) -> int:
    """``auto_method="eigen"``: the shares above ``threshold``, clipped to
    ``[1, max_src]``. Shape: [D] -> int."""
    count = int((share > threshold).sum())
    return max(1, min(max_src, count))


def classify_counts(features: np.ndarray, coef: Sequence[Sequence[float]], max_src: int) -> list[int]:
    """``auto_method="logistic"``: the count whose row of ``coef`` scores
    highest, clipped to ``[1, max_src]``.

    Shape: features [M, D] (:func:`count_features`), coef [C, D + 1] -> M ints.
    """
    coef_np = np.asarray(coef, dtype=np.float64)  # [C, D + 1]
    scores = features @ coef_np[:, :-1].T + coef_np[:, -1]  # [M, C]
    counts = np.argmax(scores, axis=1) + 1
    return [int(c) for c in np.clip(counts, 1, max_src)]


def embedding_shares(emb: np.ndarray, energy: np.ndarray | None = None, power: float = 0.0) -> np.ndarray:
    """Descending eigenvalues of the embeddings' (weighted) second moment
    ``sum_n w_n v_n v_nᵀ / sum_n w_n``, as shares that sum to 1.

    ``w_n = energy_n ** (power / 2)`` (``energy`` is |X|^2, so the weight is
    |X| ** power); ``power=0`` weighs every bin the same. All zeros when there
    are no bins or no weight. Shape: emb [N, D], energy [N] -> [D] float64.
    """
    emb = np.asarray(emb, dtype=np.float64)
    dim = emb.shape[1]
    if power > 0.0:
        if energy is None:
            raise SepError("embedding_shares: power > 0 needs the bins' energies")
        weight = np.asarray(energy, dtype=np.float64) ** (power / 2.0)  # [N]
    else:
        weight = np.ones(emb.shape[0])
    total = weight.sum()
    if emb.shape[0] == 0 or not total > 0:
        return np.zeros(dim)
    moment = (emb * (weight / total)[:, None]).T @ emb  # [D, D]
    eig = np.clip(np.linalg.eigvalsh(moment)[::-1], 0.0, None)  # descending
    return eig / max(float(eig.sum()), 1e-12)


def count_shares(emb: np.ndarray, energy: np.ndarray | None, powers: float | Sequence[float]) -> np.ndarray:
    """:func:`embedding_shares` at each of ``powers``, side by side: what
    ``auto_method="logistic"`` reads (through :func:`count_features`).

    The weighted shares (power 2) follow the loud bins, where a quiet third
    talker hardly shows; the unweighted ones (power 0) count every active bin
    alike. Shape: emb [N, D], energy [N] -> [P * D] float64.
    """
    powers = [powers] if isinstance(powers, (int, float)) else list(powers)
    return np.concatenate([embedding_shares(emb, energy, float(p)) for p in powers])


def count_features(shares: np.ndarray) -> np.ndarray:
    """What ``auto_method="logistic"`` reads: the log of every eigenvalue share
    (of :func:`count_shares`: one set of D per power).

    Logs, because the small shares matter: with more speakers the embeddings
    spread over more directions, which shows in the tail long before a third
    share passes any fixed threshold. Shape: [M, P * D] -> [M, P * D].
    """
    return np.log(np.asarray(shares, dtype=np.float64) + COUNT_FEATURE_FLOOR)


def fit_count_classifier(features: np.ndarray, counts: np.ndarray, c: float = 10.0) -> list[list[float]]:
    """Fit ``auto_logistic``: a multinomial logistic regression (scikit-learn,
    L2 penalty of inverse strength ``c``) from :func:`count_features` to the
    true speaker counts, which must cover 1..C with no gaps.

    The features are standardized for the fit, so that one ``c`` penalises
    every feature alike (log shares at different powers differ in spread), and
    the standardization is folded back into the coefficients: they apply to
    the raw features.

    Shape: features [M, P * D], counts [M] -> C rows of P * D + 1 numbers (weights,
    then the intercept), ready for ``DeepClusteringConfig(auto_logistic=...)``.
    """
    from sklearn.linear_model import LogisticRegression

    features = np.asarray(features, dtype=np.float64)
    counts = np.asarray(counts).astype(int)
    classes = np.unique(counts)
    if features.ndim != 2 or counts.shape != (features.shape[0],):
        raise SepError(f"fit_count_classifier: features [M, D] and counts [M], got {features.shape} and {counts.shape}")
    if classes.size < 2 or not np.array_equal(classes, np.arange(1, classes.size + 1)):
        raise SepError(f"fit_count_classifier: counts must cover 1..C (C >= 2) with no gaps, got {classes.tolist()}")
    mean = features.mean(0)  # [P * D]
    scale = features.std(0)
    scale[scale == 0] = 1.0  # a constant feature (e.g. a share at the floor in every mixture) carries nothing
    clf = LogisticRegression(C=c, max_iter=20000).fit((features - mean) / scale, counts)
    weight = clf.coef_ / scale  # [C, P * D]: w'((x - m) / s) + b = (w' / s) x + (b - w' m / s)
    intercept = clf.intercept_ - (clf.coef_ * (mean / scale)).sum(1)  # [C]
    coef = np.hstack([weight, intercept[:, None]])  # [C, P * D + 1], rows in class order 1..C
    return coef.tolist()


__all__ = [
    "AUTO_METHODS",
    "COUNT_FEATURE_FLOOR",
    "REMOVED_AUTO_METHODS",
    "classify_counts",
    "cluster_bins",
    "cluster_masks",
    "count_features",
    "count_from_shares",
    "count_shares",
    "embedding_shares",
    "fit_centroids",
    "fit_count_classifier",
]

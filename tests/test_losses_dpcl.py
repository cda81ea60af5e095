"""Deep clustering loss: the low-rank form against the dense ‖VVᵀ − YYᵀ‖²_F."""
import numpy as np
import pytest
import torch
import torch.nn.functional as nnf

from sepcli.errors import SepError
from sepcli.losses import deep_clustering_loss


def dense_loss(emb: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Σ_ij w_i w_j (v_i·v_j − y_i·y_j)² / (Σw)², averaged over the batch, via TF×TF matrices."""
    if weight is None:
        weight = torch.ones(emb.shape[:2], dtype=emb.dtype)
    items = []
    for v, y, w in zip(emb, target, weight, strict=True):
        diff = v @ v.T - y @ y.T  # [TF, TF]
        pair_w = w[:, None] * w[None, :]  # [TF, TF]
        items.append((pair_w * diff.square()).sum() / w.sum().square())
    return torch.stack(items).mean()


def random_inputs(batch=3, n_bins=40, dim=6, n_src=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    emb = nnf.normalize(torch.randn(batch, n_bins, dim, generator=gen, dtype=torch.float64), dim=-1)
    labels = torch.randint(0, n_src, (batch, n_bins), generator=gen)
    target = nnf.one_hot(labels, n_src).double()
    weight = (torch.rand(batch, n_bins, generator=gen, dtype=torch.float64) > 0.3).double()
    weight *= torch.rand(batch, n_bins, generator=gen, dtype=torch.float64) + 0.5  # non-binary too
    return emb, target, weight


@pytest.mark.parametrize("use_weight", [True, False])
def test_low_rank_equals_dense(use_weight):
    emb, target, weight = random_inputs()
    weight = weight if use_weight else None
    got = deep_clustering_loss(emb, target, weight)
    want = dense_loss(emb, target, weight)
    assert got.shape == ()
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert got > 0.05  # random embeddings are far from the ideal affinity


def test_gradient_equals_dense_gradient():
    emb, target, weight = random_inputs(seed=1)
    a = emb.clone().requires_grad_(True)
    b = emb.clone().requires_grad_(True)
    deep_clustering_loss(a, target, weight).backward()
    dense_loss(b, target, weight).backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12)


def test_zero_for_ideal_embeddings_and_weights_matter():
    _, target, weight = random_inputs(dim=3, n_src=3, seed=2)
    ideal = target.clone()  # one-hot embeddings: VVᵀ == YYᵀ
    assert deep_clustering_loss(ideal, target, weight).abs() < 1e-12
    # Wrong embeddings only on zero-weight bins cost nothing.
    wrong = ideal.clone()
    silent = weight == 0
    wrong[silent] = torch.tensor([0.0, 0.0, 1.0], dtype=wrong.dtype)
    wrong[silent & (target[..., 2] == 1)] = torch.tensor([1.0, 0.0, 0.0], dtype=wrong.dtype)
    assert deep_clustering_loss(wrong, target, weight).abs() < 1e-12
    assert deep_clustering_loss(wrong, target, None) > 1e-3


def test_normalised_by_weight_sum_so_length_does_not_matter():
    emb, target, _ = random_inputs(batch=1, n_bins=30, seed=3)
    once = deep_clustering_loss(emb, target)
    twice = deep_clustering_loss(emb.repeat(1, 2, 1), target.repeat(1, 2, 1))
    torch.testing.assert_close(once, twice)


def test_float32_long_input_is_accurate():
    # TF ≈ 50k bins as in a 3 s utterance; raw terms are ~1e9 in float32.
    gen = torch.Generator().manual_seed(4)
    n_bins, dim = 50_000, 20
    labels = torch.randint(0, 2, (1, n_bins), generator=gen)
    target = nnf.one_hot(labels, 2).double()
    emb = nnf.normalize(target @ torch.randn(2, dim, generator=gen, dtype=torch.float64)
                        + 0.3 * torch.randn(1, n_bins, dim, generator=gen, dtype=torch.float64), dim=-1)
    want = deep_clustering_loss(emb, target)
    got = deep_clustering_loss(emb.float(), target.float())
    assert got.dtype == torch.float32
    assert abs(got.item() - want.item()) < 1e-5 * max(1.0, want.item())


def test_all_zero_weight_is_finite_zero():
    emb, target, _ = random_inputs(batch=2)
    weight = torch.zeros(emb.shape[:2], dtype=emb.dtype)
    loss = deep_clustering_loss(emb.requires_grad_(True), target, weight)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(emb.grad).all()


def test_bad_shapes_raise():
    emb, target, weight = random_inputs()
    with pytest.raises(SepError):
        deep_clustering_loss(emb, target[:, :-1])
    with pytest.raises(SepError):
        deep_clustering_loss(emb[0], target[0])
    with pytest.raises(SepError):
        deep_clustering_loss(emb, target, weight[:, :-1])


def test_oracle_soft_masks_are_the_softmax_of_distances_to_each_sources_weighted_mean():
    from scipy.special import softmax

    from sepcli.losses import oracle_soft_masks

    emb, target, weight = random_inputs(batch=2, n_bins=60, dim=5, n_src=3, seed=4)
    target[1, :, 2] = 0  # item 1: the third source owns no bin (a silent reference)
    target[1, :, 0] += (target.sum(-1) == 0)[1].double()  # its bins go to source 0
    masks, present = oracle_soft_masks(emb, target, weight, temperature=0.5)
    assert present.tolist() == [[True, True, True], [True, True, False]]
    for b in range(2):
        e, y, w = emb[b].numpy(), target[b].numpy(), weight[b].numpy()
        cols = [s for s in range(3) if (w * y[:, s]).sum() > 0]
        centroids = np.stack([(w * y[:, s]) @ e / (w * y[:, s]).sum() for s in cols])  # [S', D]
        dist2 = ((e[:, None, :] - centroids[None]) ** 2).sum(-1)  # [N, S']
        want = np.zeros((e.shape[0], 3))
        want[:, cols] = softmax(-dist2 / 0.5, axis=1)
        np.testing.assert_allclose(masks[b].numpy(), want, atol=1e-10)
    # No present source at all (digital silence): finite, evenly shared.
    masks, present = oracle_soft_masks(emb, target, torch.zeros_like(weight), temperature=0.5)
    assert not present.any() and torch.allclose(masks, torch.full_like(masks, 1 / 3))
    with pytest.raises(SepError):
        oracle_soft_masks(emb, target, weight, temperature=0.0)
    with pytest.raises(SepError):
        oracle_soft_masks(emb, target[:, :-1], weight, temperature=0.5)

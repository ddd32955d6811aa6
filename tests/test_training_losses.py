"""Each contrastive loss equals a direct, loop-by-loop computation of its published definition."""

import math

import pytest
import torch

from training.losses import (
    dense_similarity,
    mma_loss,
    nt_xent,
    nt_xent_dual,
    nt_xent_logits,
    simclr_loss,
    top1_accuracy,
)


def naive_nt_xent(a: torch.Tensor, b: torch.Tensor, t: float) -> float:
    """reference_facts.md §2.3 literally: 2N L2-normalised embeddings, positive = partner, the other
    2N-2 (same modality included) negatives, CE over [pos, negs] / T, averaged over the 2N anchors."""
    feats = [v / math.sqrt(sum(float(x) ** 2 for x in v)) for v in torch.cat([a, b]).double()]
    n2 = len(feats)
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        partner = i + n if i < n else i - n
        sims = {j: sum(float(x) * float(y) for x, y in zip(feats[i], feats[j])) / t for j in range(n2) if j != i}
        pos = sims[partner]
        negatives = [s for j, s in sims.items() if j != partner]
        assert len(negatives) == n2 - 2
        logits = [pos] + negatives
        log_sum = math.log(sum(math.exp(v) for v in logits))
        total += -(pos - log_sum)
    return total / n2


def naive_mma(x: torch.Tensor, y: torch.Tensor, t: float) -> float:
    """§2.4: S[i, j] = mean over pixels of cos(x_i(p), y_j(p)); symmetric InfoNCE with the diagonal."""
    b, c, h, w = x.shape
    s = [[0.0] * b for _ in range(b)]
    for i in range(b):
        for j in range(b):
            acc = 0.0
            for r in range(h):
                for q in range(w):
                    u, v = x[i, :, r, q].double(), y[j, :, r, q].double()
                    acc += float((u * v).sum() / (u.norm() * v.norm()))
            s[i][j] = acc / (h * w)
    rows = []
    cols = []
    for i in range(b):
        row = [s[i][j] / t for j in range(b)]
        col = [s[j][i] / t for j in range(b)]
        rows.append(-(row[i] - math.log(sum(math.exp(v) for v in row))))
        cols.append(-(col[i] - math.log(sum(math.exp(v) for v in col))))
    return (sum(rows) + sum(cols)) / (2 * b)


@pytest.mark.parametrize("n,d,t", [(2, 3, 0.07), (5, 8, 0.2), (7, 4, 1.0)])
def test_nt_xent_dual_equals_naive_definition(n, d, t):
    g = torch.Generator().manual_seed(n * 100 + d)
    z1, z2 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g) * 3  # norms differ: normalisation matters
    expected = naive_nt_xent(z1, z2, t)
    assert float(nt_xent_dual(z1, z2, t)) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert float(simclr_loss(z1, z2, t)) == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_nt_xent_matches_the_reference_implementations_masking_formulation():
    # The SimCLR code removes the diagonal and puts the positive first; -inf on the diagonal is the same.
    g = torch.Generator().manual_seed(3)
    z = torch.nn.functional.normalize(torch.randn(8, 5, generator=g), dim=1)
    n = 4
    sim = z @ z.T
    mask = torch.eye(2 * n, dtype=torch.bool)
    labels = torch.cat([torch.arange(n)] * 2)
    pos_mask = (labels[:, None] == labels[None, :])[~mask].view(2 * n, -1)
    sim_off = sim[~mask].view(2 * n, -1)
    logits = torch.cat([sim_off[pos_mask].view(2 * n, 1), sim_off[~pos_mask].view(2 * n, -1)], dim=1) / 0.5
    reference = torch.nn.functional.cross_entropy(logits, torch.zeros(2 * n, dtype=torch.long))
    assert float(nt_xent(z[:n], z[n:], 0.5)) == pytest.approx(float(reference), rel=1e-6)


def test_nt_xent_logits_layout_and_perfect_alignment():
    z = torch.eye(4)
    logits, targets = nt_xent_logits(z, z.clone(), 0.1)
    assert logits.shape == (8, 8)
    assert torch.isinf(logits.diagonal()).all() and (logits.diagonal() < 0).all()
    assert targets.tolist() == [4, 5, 6, 7, 0, 1, 2, 3]
    assert float(top1_accuracy(logits, targets)) == 1.0
    # identical partners, orthogonal others: loss = log(1 + 6 exp(-10))
    # (float32 logsumexp around 10 resolves ~1e-6)
    assert float(nt_xent(z, z.clone(), 0.1)) == pytest.approx(math.log(1 + 6 * math.exp(-10)), abs=2e-6)


def test_nt_xent_rejects_mismatched_views():
    with pytest.raises(ValueError, match=r"\(3, 4\) and \(3, 5\)"):
        nt_xent(torch.randn(3, 4), torch.randn(3, 5), 0.1)


def test_dense_similarity_is_mean_per_pixel_cosine():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(3, 4, 2, 3, generator=g), torch.randn(2, 4, 2, 3, generator=g)
    s = dense_similarity(x, y)
    assert s.shape == (3, 2)
    for i in range(3):
        for j in range(2):
            cos = torch.nn.functional.cosine_similarity(x[i], y[j], dim=0)  # (2, 3)
            assert float(s[i, j]) == pytest.approx(float(cos.mean()), rel=1e-5)
    # Equal to the MMA code's conv2d formulation for equal-size maps.
    nx, ny = torch.nn.functional.normalize(x, dim=1), torch.nn.functional.normalize(y, dim=1)
    conv = torch.nn.functional.conv2d(nx, ny) / (2 * 3)
    assert torch.allclose(conv[:, :, 0, 0], s, atol=1e-6)


@pytest.mark.parametrize("b,t", [(2, 0.1), (4, 0.5)])
def test_mma_loss_equals_naive_definition(b, t):
    g = torch.Generator().manual_seed(b)
    x, y = torch.randn(b, 3, 2, 2, generator=g), torch.randn(b, 3, 2, 2, generator=g)
    assert float(mma_loss(x, y, t)) == pytest.approx(naive_mma(x, y, t), rel=1e-5, abs=1e-6)


def test_losses_are_differentiable_and_decrease_with_alignment():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 8, generator=g, requires_grad=True)
    b = torch.randn(6, 8, generator=g)
    loss = nt_xent_dual(a, b, 0.2)
    loss.backward()
    assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
    assert float(nt_xent_dual(b.clone(), b, 0.2)) < float(loss.detach())
    maps = torch.randn(4, 3, 2, 2, generator=g)
    assert float(mma_loss(maps, maps.clone(), 0.1)) < float(mma_loss(maps, torch.randn(4, 3, 2, 2, generator=g), 0.1))


def test_losses_compute_in_float32_inside_bf16_autocast():
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g)
    maps = torch.randn(4, 8, 2, 2, generator=g), torch.randn(4, 8, 2, 2, generator=g)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        logits, _ = nt_xent_logits(a, b, 0.1)
        in_autocast = (nt_xent(a, b, 0.1), mma_loss(*maps, 0.1))
    assert logits.dtype == torch.float32
    assert float(in_autocast[0]) == pytest.approx(float(nt_xent(a, b, 0.1)), rel=1e-6)
    assert float(in_autocast[1]) == pytest.approx(float(mma_loss(*maps, 0.1)), rel=1e-6)

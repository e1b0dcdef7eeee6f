"""losses/: batch-hard soft-margin triplet (hand-computed and against a per-anchor loop) and ReIDLoss."""
import math

import pytest
import torch
import torch.nn.functional as F

from losses import ReIDLoss, batch_hard_triplet_loss, pairwise_distances


def loop_reference(x, labels, normalize=True):
    """The release's formulation: a Python loop over anchors, SoftMarginLoss on d_an - d_ap."""
    x = x.double()
    if normalize:
        x = F.normalize(x, dim=1)
    n = len(x)
    d_ap, d_an = [], []
    for i in range(n):
        pos = [torch.dist(x[i], x[j]) for j in range(n) if labels[j] == labels[i]]
        neg = [torch.dist(x[i], x[j]) for j in range(n) if labels[j] != labels[i]]
        d_ap.append(max(pos))
        d_an.append(min(neg))
    d_ap, d_an = torch.stack(d_ap), torch.stack(d_an)
    return torch.nn.SoftMarginLoss()(d_an - d_ap, torch.ones(n, dtype=torch.float64))


def test_triplet_hand_computed():
    # unit vectors at angles 0, 60 (label 0) and 90, 180 degrees (label 1); chord length 2 sin(angle / 2)
    angles = [0.0, 60.0, 90.0, 180.0]
    x = torch.tensor([[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in angles]) * 3.0
    labels = torch.tensor([0, 0, 1, 1])
    chord = lambda deg: 2 * math.sin(math.radians(deg) / 2)  # noqa: E731
    # anchor: (hardest positive, hardest negative)
    pairs = [(chord(60), chord(90)),   # 0: pos 60 deg away; negatives at 90 and 180
             (chord(60), chord(30)),   # 60: pos 60 away; negatives at 30 and 120
             (chord(90), chord(30)),   # 90: pos (180) 90 away; negatives at 90 and 30
             (chord(90), chord(120))]  # 180: pos 90 away; negatives at 180 and 120
    expected = sum(math.log1p(math.exp(ap - an)) for ap, an in pairs) / 4
    assert batch_hard_triplet_loss(x, labels).item() == pytest.approx(expected, rel=1e-6)


def test_triplet_without_normalisation_uses_raw_distances():
    x = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0], [0.0, 5.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # anchor 0: d_ap 3, d_an 4; anchor 1: d_ap 3, d_an 5; anchor 2: d_ap 1, d_an 4; anchor 3: d_ap 1, d_an 5
    expected = (math.log1p(math.exp(-1)) + math.log1p(math.exp(-2)) + math.log1p(math.exp(-3))
                + math.log1p(math.exp(-4))) / 4
    assert batch_hard_triplet_loss(x, labels, normalize=False).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("normalize", [True, False])
def test_triplet_matches_loop_reference(normalize):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(24, 16, generator=g)
    labels = torch.arange(6).repeat_interleave(4)[torch.randperm(24, generator=g)]
    ours = batch_hard_triplet_loss(x, labels, normalize)
    ref = loop_reference(x, labels, normalize)
    assert ours.dtype == torch.float32
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)


def test_triplet_gradient_matches_loop_reference():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(12, 8, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    a = x.float().clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    batch_hard_triplet_loss(a, labels).backward()
    loop_reference(b, labels).backward()
    torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-4, atol=1e-6)


def test_triplet_is_float32_under_autocast():
    x = torch.randn(8, 16, dtype=torch.bfloat16)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = batch_hard_triplet_loss(x, labels)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(loop_reference(x.float(), labels).item(), rel=1e-5)


def test_anchor_without_negatives_contributes_zero():
    x = torch.randn(4, 8)
    assert batch_hard_triplet_loss(x, torch.zeros(4, dtype=torch.long)).item() == 0.0


def test_pairwise_distances():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    d = pairwise_distances(x)
    torch.testing.assert_close(d, torch.tensor([[1e-6, 5.0], [5.0, 1e-6]]))


def test_reid_loss_is_mean_of_seven_terms():
    g = torch.Generator().manual_seed(5)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    logits = [torch.randn(8, 10, generator=g) for _ in range(5)]
    embeddings = [torch.randn(8, 6, generator=g) for _ in range(2)]
    total, terms = ReIDLoss()(logits, embeddings, labels)
    assert list(terms) == ["ce0", "ce1", "ce2", "ce3", "ce4", "tri0", "tri1"]
    ce = [F.cross_entropy(out, labels).item() for out in logits]
    tri = [loop_reference(e, labels).item() for e in embeddings]
    assert total.item() == pytest.approx(sum(ce + tri) / 7, rel=1e-5)
    for i, value in enumerate(ce):
        assert terms[f"ce{i}"].item() == pytest.approx(value, rel=1e-6)


def test_reid_loss_float32_under_autocast_and_differentiable():
    labels = torch.tensor([0, 0, 1, 1])
    logits = [torch.randn(4, 5, requires_grad=True) for _ in range(5)]
    embeddings = [torch.randn(4, 6, requires_grad=True) for _ in range(2)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, terms = ReIDLoss()([x.bfloat16() for x in logits], [e.bfloat16() for e in embeddings], labels)
    assert total.dtype == torch.float32 and all(t.dtype == torch.float32 for t in terms.values())
    total.backward()
    assert all(x.grad is not None for x in logits + embeddings)


def test_global_triplet_in_one_process_is_the_plain_loss():
    """global_triplet gathers over the torchrun processes (tests/test_distributed.py); alone it changes nothing."""
    g = torch.Generator().manual_seed(6)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    logits = [torch.randn(6, 4, generator=g) for _ in range(5)]
    embeddings = [torch.randn(6, 5, generator=g, requires_grad=True) for _ in range(2)]
    plain, plain_terms = ReIDLoss()(logits, embeddings, labels)
    grads = torch.autograd.grad(plain, embeddings)
    total, terms = ReIDLoss(global_triplet=True)(logits, embeddings, labels)
    assert torch.equal(total, plain) and all(torch.equal(terms[k], plain_terms[k]) for k in terms)
    for got, expected in zip(torch.autograd.grad(total, embeddings), grads):
        assert torch.equal(got, expected)

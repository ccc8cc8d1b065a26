"""The pure functions of RLOO and PPO against numbers worked out by hand and plain loops."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from lit_align.objectives.policy_gradient import KLPenalty, adaptive_kl_coef
from lit_align.objectives.rl import (
    aggregate,
    aggregation_units,
    clipped_surrogate,
    clipped_value_loss,
    explained_variance,
    gae,
    kl_estimate,
    rloo_advantages,
    whiten,
)  # fmt: skip


def test_kl_estimators_by_hand():
    """d = log π − log π_ref = −1 − (−1.5) = 0.5: k1 = 0.5, k2 = 0.5²/2 = 0.125,
    k3 = e^(−0.5) − 1 + 0.5 = 0.6065307 − 0.5 = 0.1065307."""
    logps, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -2.0])
    assert_close(kl_estimate(logps, ref, "k1"), torch.tensor([0.5, 0.0]))
    assert_close(kl_estimate(logps, ref, "k2"), torch.tensor([0.125, 0.0]))
    assert_close(kl_estimate(logps, ref, "k3"), torch.tensor([math.exp(-0.5) - 0.5, 0.0]))
    assert (kl_estimate(torch.randn(100), torch.randn(100), "k3") >= 0).all()
    with pytest.raises(ValueError, match="kl estimator must be one of"):
        kl_estimate(logps, ref, "k4")


def test_kl_estimators_are_unbiased_or_not_as_documented():
    """Exact expectations over p = [0.9, 0.05, 0.05], q = [0.2, 0.4, 0.4]: E_p[k1] = E_p[k3] =
    KL(p‖q) = 0.9·ln 4.5 + 0.1·ln 0.125 = 1.1457; E_p[k2] = ½(0.9·ln² 4.5 + 0.1·ln² 0.125) = 1.2341."""
    p, q = torch.tensor([0.9, 0.05, 0.05]), torch.tensor([0.2, 0.4, 0.4])
    kl = 0.9 * math.log(4.5) + 0.1 * math.log(0.125)
    expected = {"k1": kl, "k2": 0.5 * (0.9 * math.log(4.5) ** 2 + 0.1 * math.log(0.125) ** 2), "k3": kl}
    for name, value in expected.items():
        assert_close((p * kl_estimate(p.log(), q.log(), name)).sum(), torch.tensor(value), msg=name)
    assert expected["k2"] - kl > 0.08  # k2 is biased


def test_rloo_advantages_by_hand():
    """[1, 0, 0, 1]: A_0 = 1 − (0 + 0 + 1)/3 = 2/3, A_1 = 0 − (1 + 0 + 1)/3 = −2/3.
    Unscorable sample 1 in [1, ·, 0, 0]: n = 3, A_0 = 1 − 0/2 = 1, A_2 = A_3 = 0 − 1/2 = −0.5."""
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 7.0, 0.0, 0.0]])
    valid = torch.tensor([[True, True, True, True], [True, False, True, True]])
    expected = torch.tensor([[2 / 3, -2 / 3, -2 / 3, 2 / 3], [1.0, 0.0, -0.5, -0.5]])
    assert_close(rloo_advantages(rewards, valid), expected)


@pytest.mark.parametrize(
    ("rewards", "valid"),
    [
        ([[1.0, 5.0, 5.0]], [[True, False, False]]),  # one scorable sample: no baseline
        ([[0.3, 0.3, 0.3]], [[True, True, True]]),  # all equal: no signal
        ([[1.0, 2.0, 3.0]], [[False, False, False]]),  # nothing scorable
    ],
)
def test_rloo_advantages_edge_cases_are_zero(rewards, valid):
    assert torch.equal(rloo_advantages(torch.tensor(rewards), torch.tensor(valid)), torch.zeros(1, 3))


def test_rloo_advantages_match_a_plain_loop():
    torch.manual_seed(0)
    rewards, valid = torch.randn(50, 5), torch.rand(50, 5) > 0.3
    expected = torch.zeros(50, 5)
    for p in range(50):
        idx = [i for i in range(5) if valid[p, i]]
        for i in idx if len(idx) > 1 else []:
            expected[p, i] = rewards[p, i] - sum(rewards[p, j] for j in idx if j != i) / (len(idx) - 1)
    assert_close(rloo_advantages(rewards, valid), expected)
    # Leave-one-out is the centred reward scaled by n/(n − 1), for full groups.
    full = torch.randn(10, 4)
    assert_close(
        rloo_advantages(full, torch.ones(10, 4, dtype=torch.bool)), (full - full.mean(1, keepdim=True)) * 4 / 3
    )


def test_gae_by_hand():
    """r = [0, 0, 1], V = [0.5, 0.6, 0.7], γ = 1, λ = 0.5:
    δ_2 = 1 − 0.7 = 0.3, A_2 = 0.3; δ_1 = 0.7 − 0.6 = 0.1, A_1 = 0.1 + 0.5·0.3 = 0.25;
    δ_0 = 0.6 − 0.5 = 0.1, A_0 = 0.1 + 0.5·0.25 = 0.225; returns = A + V = [0.725, 0.85, 1.0].
    The same response between padding on both sides gives the same numbers in place."""
    rewards = torch.tensor([[0.0, 0.0, 1.0], [9.0, 0.0, 0.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [0.3, 0.4, 0.5]])
    mask = torch.tensor([[1, 1, 1], [0, 0, 0]])  # the second row is fully masked
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    assert_close(advantages, torch.tensor([[0.225, 0.25, 0.3], [0.0, 0.0, 0.0]]))
    assert_close(returns, torch.tensor([[0.725, 0.85, 1.0], [0.0, 0.0, 0.0]]))
    padded_a, padded_r = gae(
        torch.tensor([[5.0, 0.0, 0.0, 1.0, 5.0]]), torch.tensor([[9.0, 0.5, 0.6, 0.7, 9.0]]),
        torch.tensor([[0, 1, 1, 1, 0]]), gamma=1.0, lam=0.5,
    )  # fmt: skip
    assert_close(padded_a, torch.tensor([[0.0, 0.225, 0.25, 0.3, 0.0]]))
    assert_close(padded_r, torch.tensor([[0.0, 0.725, 0.85, 1.0, 0.0]]))


def test_gae_matches_a_plain_loop():
    torch.manual_seed(0)
    rewards, values = torch.randn(6, 9), torch.randn(6, 9)
    mask = torch.zeros(6, 9, dtype=torch.long)
    for i, (start, end) in enumerate([(0, 9), (2, 5), (3, 4), (0, 0), (5, 9), (1, 8)]):
        mask[i, start:end] = 1
    gamma, lam = 0.9, 0.8
    expected_a, expected_r = torch.zeros(6, 9), torch.zeros(6, 9)
    for i in range(6):
        positions = [t for t in range(9) if mask[i, t]]
        running = 0.0
        for n, t in reversed(list(enumerate(positions))):
            next_value = values[i, positions[n + 1]] if n + 1 < len(positions) else 0.0
            delta = rewards[i, t] + gamma * next_value - values[i, t]
            running = delta + gamma * lam * running
            expected_a[i, t], expected_r[i, t] = running, running + values[i, t]
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    assert_close(advantages, expected_a)
    assert_close(returns, expected_r)


def test_clipped_surrogate_by_hand():
    """ε = 0.2. ρ = 1.5, A = 1: max(−1.5, −1.2) = −1.2 (clipped). ρ = 1.5, A = −1: max(1.5, 1.2)
    = 1.5. ρ = 0.5, A = 1: max(−0.5, −0.8) = −0.5. ρ = 0.5, A = −1: max(0.5, 0.8) = 0.8 (clipped)."""
    logps = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5])).requires_grad_()
    advantages = torch.tensor([1.0, -1.0, 1.0, -1.0])
    losses, clipped = clipped_surrogate(logps, torch.zeros(4), advantages, clip=0.2)
    assert_close(losses, torch.tensor([-1.2, 1.5, -0.5, 0.8]))
    assert clipped.tolist() == [True, False, False, True]
    losses.sum().backward()
    # d(−A·ρ)/d log π = −A·ρ where the unclipped term is active; 0 where clipping is.
    assert_close(logps.grad, torch.tensor([0.0, 1.5, -0.5, 0.0]))


def test_clipped_value_loss_by_hand():
    """ε_v = 0.2. V = 1.0, V_old = 0.5, R = 0.8: ½·max(0.2², (0.7 − 0.8)²) = 0.02.
    V = 0.2, V_old = 0.5, R = 1: ½·max(0.8², 0.7²) = 0.32. V = 0.9, V_old = 0.5, R = 1:
    ½·max(0.1², (0.7 − 1)²) = 0.045 (the clipped error is larger)."""
    values, old, returns = torch.tensor([1.0, 0.2, 0.9]), torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0.8, 1.0, 1.0])
    assert_close(clipped_value_loss(values, old, returns, clip=0.2), torch.tensor([0.02, 0.32, 0.045]))
    assert_close(clipped_value_loss(values, old, returns, clip=None), torch.tensor([0.02, 0.32, 0.005]))


def test_whiten_by_hand_and_masked():
    """[1, 2, 3]: mean 2, unbiased variance 1 → [−1, 0, 1]; masked entries stay 0."""
    out = whiten(torch.tensor([[1.0, 2.0, 3.0, 100.0]]), torch.tensor([[1, 1, 1, 0]]))
    assert_close(out, torch.tensor([[-1.0, 0.0, 1.0, 0.0]]), atol=1e-6, rtol=1e-6)
    assert torch.equal(whiten(torch.tensor([[4.0, 5.0]]), torch.zeros(1, 2)), torch.zeros(1, 2))
    assert_close(whiten(torch.tensor([[4.0, 5.0]]), torch.tensor([[1, 0]])), torch.zeros(1, 2))


def test_aggregations_by_hand():
    """ℓ = [[1, 2, ·], [3, ·, ·]]: token_mean = 6/3 = 2, seq_mean = (1.5 + 3)/2 = 2.25,
    seq_sum = 6/2 = 3; a fully masked row counts in none."""
    losses = torch.tensor([[1.0, 2.0, 9.0], [3.0, 9.0, 9.0], [9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    for name, expected in [("token_mean", 2.0), ("seq_mean", 2.25), ("seq_sum", 3.0)]:
        total, units = aggregate(losses, mask, name), aggregation_units(mask, name)
        assert_close(total / units, torch.tensor(expected), msg=name)


def test_explained_variance():
    returns, mask = torch.tensor([[1.0, 2.0, 3.0]]), torch.ones(1, 3)
    assert_close(explained_variance(returns, returns, mask), torch.tensor(1.0))
    assert_close(explained_variance(torch.full((1, 3), 2.0), returns, mask), torch.tensor(0.0))


def test_adaptive_kl_coefficient_by_hand():
    """KL 12 against target 6: error clipped to 0.2; β = 0.1·(1 + 0.2·100/1000) = 0.102.
    KL 5.4: error −0.1, β = 0.1·(1 − 0.1·100/1000) = 0.099."""
    assert adaptive_kl_coef(0.1, 12.0, 6.0, 1000, 100) == pytest.approx(0.102)
    assert adaptive_kl_coef(0.1, 5.4, 6.0, 1000, 100) == pytest.approx(0.099)
    with pytest.raises(ValueError, match=r"kl\.placement"):
        KLPenalty(placement="advantage")
    with pytest.raises(ValueError, match=r"kl\.estimator"):
        KLPenalty(estimator="k5")

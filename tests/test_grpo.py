"""The GRPO family's parts by hand (advantages, ratios, clipping, aggregation), the objective on
hand-worked rows, and its update invariant to micro-batching for every aggregation."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

import tests.test_policy_gradient as pg
from lit_align.data.formats import FORMATS
from lit_align.objectives.grpo import GRPO
from lit_align.objectives.pg_parts import (
    STD_EPS,
    batch_std_advantages,
    clipped_policy_loss,
    group_batch_std_advantages,
    group_mean_advantages,
    group_std_advantages,
    importance_ratio,
)
from lit_align.objectives.policy_gradient import KLPenalty
from lit_align.objectives.rl import aggregate, aggregation_units
from lit_align.objectives.rloo import RLOO

NAN = float("nan")
# A group of two right and two wrong, a tie, and one with an unscorable sample.
REWARDS = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [2.0, NAN, 0.0, 1.0]])


def _adv(fn, rewards, **kwargs):
    return fn(rewards.nan_to_num(0.0), ~rewards.isnan(), **kwargs)


def test_group_std_advantages_by_hand():
    """[1, 0, 0, 1]: mean 0.5, std √(4·0.25/3) = √(1/3) → ±0.5/(√(1/3) + ε). The tie: 0. [2, −, 0, 1]:
    mean 1, std √((1 + 1 + 0)/2) = 1 → [1, 0, −1, 0]/(1 + ε), the unscorable sample 0."""
    a = 0.5 / (math.sqrt(1 / 3) + STD_EPS)
    b = 1 / (1 + STD_EPS)
    expected = torch.tensor([[a, -a, -a, a], [0.0] * 4, [b, 0.0, -b, 0.0]])
    assert_close(_adv(group_std_advantages, REWARDS), expected)


def test_group_mean_advantages_by_hand():
    expected = torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.0] * 4, [1.0, 0.0, -1.0, 0.0]])
    assert_close(_adv(group_mean_advantages, REWARDS), expected)


@pytest.mark.parametrize("fn", [group_std_advantages, group_mean_advantages])
def test_group_advantages_of_a_one_sample_group_are_zero(fn):
    """k = 1, or one scorable sample of four: no group statistic, advantage 0 (not NaN)."""
    assert torch.equal(_adv(fn, torch.tensor([[3.0], [-1.0]])), torch.zeros(2, 1))
    assert torch.equal(_adv(fn, torch.tensor([[5.0, NAN, NAN, NAN]])), torch.zeros(1, 4))


def test_batch_std_advantages_by_hand():
    """REINFORCE++: valid rewards 1, 0, 3 over the batch: mean 4/3, var ((1/3)² + (4/3)² +
    (5/3)²)/2 = 7/3. The second prompt's single scorable sample is scored against the batch."""
    std = math.sqrt(7 / 3) + STD_EPS
    expected = torch.tensor([[-1 / 3, -4 / 3], [5 / 3, 0.0]]) / std
    assert_close(_adv(batch_std_advantages, torch.tensor([[1.0, 0.0], [3.0, NAN]])), expected)
    assert torch.equal(_adv(batch_std_advantages, torch.tensor([[2.0, NAN]])), torch.zeros(1, 2))


def test_group_batch_std_advantages_by_hand():
    """Centred by group: [0.5, −0.5], (one sample: out), [−1, 1]; over the batch: mean 0,
    var (0.25 + 0.25 + 1 + 1)/3 = 5/6."""
    std = math.sqrt(5 / 6) + STD_EPS
    rewards = torch.tensor([[1.0, 0.0], [3.0, NAN], [2.0, 4.0]])
    expected = torch.tensor([[0.5, -0.5], [0.0, 0.0], [-1.0, 1.0]]) / std
    assert_close(_adv(group_batch_std_advantages, rewards), expected)


def test_importance_ratio_per_token_and_per_sequence():
    """log π − log π_old = [log 2, log 8, (padding 5)]: per token [2, 8, ·]; per sequence the
    geometric mean over the response, exp((log 2 + log 8)/2) = 4, the padding ignored."""
    old = torch.zeros(1, 3)
    logps = torch.tensor([[math.log(2), math.log(8), 5.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    assert_close(importance_ratio(logps, old, mask, "token")[:, :2], torch.tensor([[2.0, 8.0]]))
    assert_close(importance_ratio(logps, old, mask, "sequence"), torch.tensor([[4.0]]))


def test_clipping_at_both_bounds_and_the_dual_clip():
    """ε_low = 0.2, ε_high = 0.28 (DAPO):
    ρ 1.5, A  1 → −min(1.5, 1.28) = −1.28 (upper bound active)
    ρ 1.1, A  1 → −1.1                    (inside)
    ρ 0.7, A −1 → max(0.7, 0.8) = 0.8     (lower bound active)
    ρ 0.5, A  1 → max(−0.5, −0.8) = −0.5  (pessimistic: unclipped)
    ρ 1.5, A −1 → max(1.5, 1.28) = 1.5    (unclipped; the dual clip c = 3 leaves it)
    ρ 4.0, A −1 → 4.0, dual clip: min(4, 3) = 3"""
    ratio = torch.tensor([[1.5, 1.1, 0.7, 0.5, 1.5, 4.0]], requires_grad=True)
    adv = torch.tensor([[1.0, 1.0, -1.0, 1.0, -1.0, -1.0]])
    loss, low, high = clipped_policy_loss(ratio, adv, 0.2, 0.28)
    assert_close(loss, torch.tensor([[-1.28, -1.1, 0.8, -0.5, 1.5, 4.0]]))
    assert low.tolist() == [[False, False, True, False, False, False]]
    assert high.tolist() == [[True, False, False, False, False, False]]
    dual, _, _ = clipped_policy_loss(ratio, adv, 0.2, 0.28, dual_clip=3.0)
    assert_close(dual, torch.tensor([[-1.28, -1.1, 0.8, -0.5, 1.5, 3.0]]))
    dual.sum().backward()  # no gradient where a bound is active
    assert_close(ratio.grad, torch.tensor([[0.0, -1.0, 0.0, -1.0, 1.0, 0.0]]))
    symmetric, _, high = clipped_policy_loss(ratio.detach(), adv, 0.2, 0.2)
    assert symmetric[0, 0] == pytest.approx(-1.2) and high[0, 0]


def test_each_aggregation_by_hand():
    """ℓ = [[1, 2, 3], [4, ·, ·]]: token_mean 10/4; seq_mean (2 + 4)/2; seq_sum 10/2; token_sum
    with L = 5: (10/5)/2."""
    losses = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    for aggregation, expected in [("token_mean", 2.5), ("seq_mean", 3.0), ("seq_sum", 5.0), ("token_sum", 1.0)]:
        total = aggregate(losses, mask, aggregation, max_tokens=5)
        assert float(total / aggregation_units(mask, aggregation)) == pytest.approx(expected), aggregation
    with pytest.raises(ValueError, match="max_tokens"):
        GRPO(aggregation="token_sum")
    with pytest.raises(ValueError, match="max_tokens"):
        RLOO(aggregation="token_sum")


def test_grpo_loss_by_hand():
    """On-policy (ρ = 1), no KL, advantages [2, 2] and [−1]: ℓ = −A per token. seq_mean
    (−2 + 1)/2 = −0.5; token_mean (−2 − 2 + 1)/3 = −1; token_sum with L = 4:
    (−3/4)/2 = −0.375. GSPO (sequence ratio) on-policy is the same."""
    batch = pg._batch([[2.0, 2.0], [-1.0]], [[-1.0, -1.0], [-1.0]])
    logps = batch.old_logps.clone()
    gspo = {"ratio_level": "sequence", "epsilon_low": 3e-4, "epsilon_high": 4e-4}
    for kwargs, expected in [({"aggregation": "seq_mean"}, -0.5), ({"aggregation": "token_mean"}, -1.0),
                             ({"aggregation": "token_sum", "max_tokens": 4}, -0.375), (gspo, -0.5)]:  # fmt: skip
        grpo = GRPO(KLPenalty(coef=0.0), **kwargs)
        assert_close(grpo(batch, logps, None, grpo.normalizer(batch)).loss, torch.tensor(expected), msg=str(kwargs))


def test_grpo_default_kl_is_k3_in_the_loss():
    """A = 0, log π − log π_ref = 0.5: the loss is 0.04·(e^(−0.5) − 1 + 0.5)."""
    batch = pg._batch([[0.0, 0.0]], [[-1.0, -1.0]], ref_logps=[[-1.5, -1.5]])
    grpo = GRPO()
    assert_close(grpo(batch, batch.old_logps.clone(), None, grpo.normalizer(batch)).loss,
                 torch.tensor(0.04 * (math.exp(-0.5) - 0.5)))  # fmt: skip


def test_grpo_prepare_and_in_step_options():
    """k = 2, r = [1, 0] and [1, −]: group_std A = ±0.5/(√0.5 + ε); the second group 0."""
    rewards, logps, ref, mask = pg._prepare_args([1.0, 0.0, 1.0, NAN])
    exp = GRPO(KLPenalty(coef=0.0)).prepare(rewards, logps, ref, mask, num_samples=2)
    a = 0.5 / (math.sqrt(0.5) + STD_EPS)
    assert_close(exp.advantages, torch.tensor([[a, a], [-a, -a], [0.0, 0.0], [0.0, 0.0]]))
    assert GRPO().in_step_advantages and GRPO(advantage="rloo").in_step_advantages
    assert not GRPO(advantage="batch_std").in_step_advantages
    with pytest.raises(ValueError, match="delta"):
        GRPO(delta=1.1)


def test_in_step_grpo_equals_grpo_on_a_prepared_rollout():
    """As for RLOO: the step's own advantages equal `prepare`'s, so losses and gradients match."""
    rows = pg._rollout_rows(n=2, k=3)
    rewards = torch.tensor([1.0, 0.0, 0.5, NAN, 2.0, 1.0])
    prepared = FORMATS["rollout"].collate(rows, pad_id=0)
    objective = GRPO(epsilon_high=0.28, aggregation="token_mean")
    exp = objective.prepare(rewards, prepared.old_logps, prepared.ref_logps, prepared.loss_mask.float(), 3)
    prepared.advantages = exp.advantages
    in_step = FORMATS["rollout"].collate(rows, pad_id=0)
    in_step.old_logps = in_step.advantages = None
    in_step.rewards = rewards
    results = []
    for batch, ref in ((prepared, None), (in_step, prepared.ref_logps)):
        logps = prepared.old_logps.clone().requires_grad_()
        out = objective(batch, logps, ref, objective.normalizer(batch))
        out.loss.backward()
        results.append((out.loss.detach(), logps.grad))
    assert_close(results[0][0], results[1][0])
    assert_close(results[0][1], results[1][1])


@pytest.mark.parametrize(
    "objective",
    [
        lambda: GRPO(aggregation="seq_mean"),
        lambda: GRPO(KLPenalty(coef=0.0), epsilon_high=0.28, aggregation="token_mean"),
        lambda: GRPO(KLPenalty(coef=0.0), advantage="group_mean", aggregation="token_sum", max_tokens=8),
        lambda: GRPO(KLPenalty(coef=0.0), ratio_level="sequence", epsilon_low=3e-4, epsilon_high=4e-4),
        lambda: GRPO(KLPenalty(coef=0.0), advantage="batch_std", delta=3.0, aggregation="seq_sum"),
    ],
    ids=["grpo-seq_mean", "dapo-token_mean", "dr_grpo-token_sum", "gspo-seq_mean", "reinforcepp-dual-seq_sum"],
)
@pytest.mark.parametrize("micro_batch_size", [1, 3])
def test_grpo_update_is_invariant_to_micro_batching(tokenizer, tiny_model, objective, micro_batch_size):
    """One SGD step on 4 prompts × 2 samples whole equals the step in micro-batches of 1 or 3
    prompts, for every aggregation (the check of tests/test_policy_gradient.py)."""
    pg.test_policy_gradient_update_is_invariant_to_micro_batching(tokenizer, tiny_model, objective, micro_batch_size)

"""A peer's numbers as the oracle: lit_align's GRPO family against TRL 1.16's GRPOTrainer on the
same per-token inputs.

The loss is TRL's own code: ``GRPOTrainer._compute_loss`` (trl/trainer/grpo_trainer.py:3020)
called unbound on a minimal object that holds the settings it reads and hands back our
log-probs from ``_get_per_token_logps_and_entropies``. TRL's advantages are computed inside
``_generate_and_score_completions``, which needs a model and a reward; their formula
(grpo_trainer.py:2762-2787, ``sum_then_normalize``) is reproduced here with TRL's own ``nanstd``.

Deliberate differences, each outside these inputs: a group with a single scorable sample gets
advantage 0 here where TRL's Bessel-corrected ``nanstd`` makes it NaN (count 1 → 0·∞) under
``scale_rewards="group"``; lit_align's normalizer counts the whole optimizer step over every
micro-batch and rank, TRL's ``grpo``/``dr_grpo`` divide each micro-batch's mean by the
accumulation steps (equal to ours when micro-batches hold equal counts, as here: one).
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from torch.testing import assert_close

from lit_align.data.formats import FORMATS
from lit_align.objectives.grpo import GRPO
from lit_align.objectives.pg_parts import group_mean_advantages, group_std_advantages
from lit_align.objectives.policy_gradient import KLPenalty
from tests.test_policy_gradient import _row

trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")
trl_utils = pytest.importorskip("trl.trainer.utils")

K, LENGTHS, MAX_LEN = 3, [5, 2, 4, 1, 3, 5], 6  # 2 prompts × 3 samples; TRL's max_completion_length


class _Accelerator:
    num_processes, sync_gradients = 1, True

    def gather(self, x):
        return x

    def reduce(self, x, reduction="sum"):
        return x


def _trl_loss(loss_type, logps, inputs, beta, level="token", epsilon=0.2, epsilon_high=None, delta=None):
    """TRL's ``_compute_loss`` on our per-token log-probs (one process, no accumulation)."""
    trainer = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level=level, beta=beta,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=delta, steps_per_generation=1),
        loss_type=loss_type, epsilon_low=epsilon, epsilon_high=epsilon if epsilon_high is None else epsilon_high,
        use_vllm=False, vllm_importance_sampling_correction=False, model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1, max_completion_length=MAX_LEN, accelerator=_Accelerator(),
        _entropy_bonus_enabled=False, aux_loss_enabled=False, _metrics={"train": defaultdict(list)},
    )  # fmt: skip
    return trl_grpo.GRPOTrainer._compute_loss(trainer, None, inputs)


def _inputs():
    """Random per-token log-probs of 6 responses of different lengths: the current policy moved
    from the sampling one by up to ±0.5 nats per token, so both clip bounds are hit."""
    g = torch.Generator().manual_seed(0)
    rows, width = len(LENGTHS), max(LENGTHS)
    mask = (torch.arange(width) < torch.tensor(LENGTHS)[:, None]).float()
    old = -torch.rand(rows, width, generator=g) * 3 * mask
    ref = -torch.rand(rows, width, generator=g) * 3 * mask
    logps = (old + (torch.rand(rows, width, generator=g) - 0.5)) * mask
    rewards = torch.tensor([0.0, 1.0, 0.5, 2.0, 2.0, 0.0])
    return logps, old, ref, mask, rewards


def _trl_advantages(rewards, scale_rewards):
    """grpo_trainer.py:2762-2787 (``multi_objective_aggregation="sum_then_normalize"``)."""
    mean = torch.nanmean(rewards.view(-1, K), dim=1).repeat_interleave(K)
    std = trl_utils.nanstd(rewards.view(-1, K), dim=1).repeat_interleave(K)
    advantages = rewards - mean
    return advantages / (std + 1e-4) if scale_rewards == "group" else advantages


@pytest.mark.parametrize("scale_rewards,ours", [("group", group_std_advantages), ("none", group_mean_advantages)])
def test_advantages_agree_with_trl(scale_rewards, ours):
    rewards = _inputs()[-1]
    mine = ours(rewards.view(-1, K), torch.ones(2, K, dtype=torch.bool)).view(-1)
    assert_close(mine, _trl_advantages(rewards, scale_rewards))


# (TRL loss_type, importance_sampling_level, TRL's β, epsilon_high, delta) → our GRPO options.
CASES = {
    "grpo": (("grpo", "token", 0.04, None, None), {"aggregation": "seq_mean"}),
    "dr_grpo": (("dr_grpo", "token", 0.0, None, None),
                {"kl": KLPenalty(coef=0.0), "aggregation": "token_sum", "max_tokens": MAX_LEN}),
    "dapo": (("dapo", "token", 0.0, 0.28, None),
             {"kl": KLPenalty(coef=0.0), "epsilon_high": 0.28, "aggregation": "token_mean"}),
    "gspo": (("grpo", "sequence", 0.0, 0.25, None),
             {"kl": KLPenalty(coef=0.0), "ratio_level": "sequence", "epsilon_high": 0.25}),
    "grpo_dual_clip": (("grpo", "token", 0.04, None, 1.25), {"delta": 1.25}),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_loss_and_gradient_agree_with_trl(case):
    """The same per-token log-probs, old and reference log-probs and advantages: TRL's loss and
    its gradient with respect to every log-prob equal ours (float64, 1e-12 relative)."""
    (loss_type, level, beta, epsilon_high, delta), options = CASES[case]
    logps, old, ref, mask, rewards = (t.double() for t in _inputs())
    advantages = _trl_advantages(rewards, "none" if case == "dr_grpo" else "group")
    grads = []
    # TRL: one flat batch; the KL is k3 (grpo_trainer.py:3100) with β in the loss.
    flat = logps.clone().requires_grad_()
    inputs = {"prompt_ids": torch.ones(6, 1, dtype=torch.long), "prompt_mask": torch.ones(6, 1, dtype=torch.long),
              "completion_ids": torch.ones_like(mask, dtype=torch.long), "completion_mask": mask,
              "advantages": advantages, "old_per_token_logps": old, "ref_per_token_logps": ref,
              "num_items_in_batch": mask.sum()}  # fmt: skip
    theirs = _trl_loss(loss_type, flat, inputs, beta, level, 0.2, epsilon_high, delta)
    theirs.backward()
    grads.append(flat.grad)
    # lit_align: the same numbers as rollout rows (two prompts with their three samples).
    rows = []
    for p in range(2):
        span = range(p * K, (p + 1) * K)
        per_token = {key: [value[i, : LENGTHS[i]].tolist() for i in span]
                     for key, value in (("old_logps", old), ("ref_logps", ref),
                                        ("advantages", advantages[:, None] * mask))}  # fmt: skip
        rows.append(_row([1], [[5] * LENGTHS[i] for i in span], **per_token))
    batch = FORMATS["rollout"].collate(rows, pad_id=0)
    assert torch.equal(batch.loss_mask.double(), mask)
    # The rows hold float32; the layout is the flat one, so give the step the float64 originals.
    batch.old_logps, batch.ref_logps, batch.advantages = old, ref, advantages[:, None] * mask
    objective = GRPO(**{"kl": KLPenalty(coef=0.04, estimator="k3", placement="loss")} | options).double()
    objective.kl_coef.fill_(objective.kl.coef)  # β as TRL's Python float, not float32's 0.04
    ours_logps = logps.clone().requires_grad_()
    ours = objective(batch, ours_logps, None, objective.normalizer(batch)).loss
    ours.backward()
    grads.append(ours_logps.grad * mask)
    print(f"{case}: TRL {theirs.item():.15f} lit_align {ours.item():.15f} |Δ| {abs(theirs - ours).item():.1e}")
    assert_close(ours, theirs, rtol=1e-12, atol=1e-15)
    assert_close(grads[1], grads[0] * mask, rtol=1e-12, atol=1e-15)
    assert grads[0].abs().sum() > 0


def test_the_dual_clip_case_reaches_the_cap():
    """The dual-clip case above is not vacuous: some negative-advantage token has ρ > δ = 1.25."""
    logps, old, _, mask, rewards = _inputs()
    advantages = _trl_advantages(rewards, "group")[:, None]
    assert ((torch.exp(logps - old) > 1.25) & (advantages < 0) & mask.bool()).any()

"""The GRPO family as one objective whose variants are options over named parts
(`lit_align.objectives.pg_parts`, `lit_align.objectives.rl`):

k samples y_1…y_k per prompt x with rewards r_i (minus β·KL_i with ``kl.placement=reward``),

    A_i     = advantage(r)                                  (``advantage``)
    w_i,t   = ρ_t  or  s_i                                  (``ratio_level``: token | sequence)
    ℓ_i,t   = −min(w·A_i, clip(w, 1 − ε_low, 1 + ε_high)·A_i)  [dual clip at c·|A_i| if A_i < 0]
              + β·k(log π − log π_ref)                      (``kl.placement=loss``)
    L       = aggregate(ℓ) / step count                     (``aggregation``)

==============  ===============  ========  ===========  ===============  ==================
variant         advantage        ratio     ε_low/ε_high aggregation      KL
==============  ===============  ========  ===========  ===============  ==================
GRPO            group_std        token     0.2 / 0.2    seq_mean         k3 in the loss, 0.04
Dr. GRPO        group_mean       token     0.2 / 0.2    token_sum (÷L)   none
DAPO            group_std        token     0.2 / 0.28   token_mean       none (+ dynamic
                                                                         sampling, overlong)
GSPO            group_std        sequence  3e-4 / 4e-4  seq_mean         none
REINFORCE++     batch_std        token     0.2 / 0.2    token_mean       k2 in the reward
==============  ===============  ========  ===========  ===============  ==================

Papers: GRPO (Shao et al. 2024, arXiv 2402.03300), Dr. GRPO (Liu et al. 2025, arXiv
2503.20783), DAPO (Yu et al. 2025, arXiv 2503.14476), GSPO (Zheng et al. 2025, arXiv
2507.18071), REINFORCE++ (Hu 2025, arXiv 2501.03262). Unscorable samples (reward ``None``) get
advantage 0 and are left out of every statistic; they stay rows (counted by the aggregation).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_align.data.batch import RolloutBatch
from lit_align.objectives.base import ObjectiveOutput
from lit_align.objectives.pg_parts import (
    ADVANTAGES,
    GROUP_ADVANTAGES,
    RATIO_LEVELS,
    clipped_policy_loss,
    importance_ratio,
)
from lit_align.objectives.policy_gradient import Experience, KLPenalty, PolicyGradientObjective
from lit_align.objectives.reduce import masked_mean, masked_sum, normalize
from lit_align.objectives.rl import aggregate, kl_estimate


class GRPO(PolicyGradientObjective):
    """Group-relative policy optimisation and its variants over rollout rows.

    Args:
        kl: the KL penalty (GRPO: β = 0.04, k3, in the loss; ``coef=0`` turns it off).
        advantage: ``group_std`` (GRPO), ``group_mean`` (Dr. GRPO), ``rloo`` (leave-one-out),
            ``batch_std`` (REINFORCE++) or ``group_batch_std`` (REINFORCE++-baseline); see
            `lit_align.objectives.pg_parts`.
        ratio_level: ``token`` (GRPO) or ``sequence`` (GSPO's length-normalised sequence ratio).
        epsilon_low, epsilon_high: the clip range [1 − ε_low, 1 + ε_high]; ``epsilon_high``
            ``None`` is ``epsilon_low`` (symmetric), DAPO's clip-higher sets it larger.
        delta: dual clip c > 1: a negative advantage's loss is capped at c·|A| (TRL's ``delta``
            gives the same loss for c > 1 + ε_high); ``None`` off.
        aggregation: ``seq_mean`` (GRPO), ``token_mean`` (DAPO), ``token_sum`` (Dr. GRPO, needs
            ``max_tokens``) or ``seq_sum``; see `lit_align.objectives.rl.aggregate`.
        max_tokens: ``token_sum``'s constant L, the generation budget (``rollout.max_new_tokens``).
    """

    def __init__(
        self,
        kl: KLPenalty | None = None,
        advantage: str = "group_std",
        ratio_level: str = "token",
        epsilon_low: float = 0.2,
        epsilon_high: float | None = None,
        delta: float | None = None,
        aggregation: str = "seq_mean",
        max_tokens: int | None = None,
    ) -> None:
        super().__init__(kl or KLPenalty(coef=0.04, estimator="k3", placement="loss"), aggregation, max_tokens)
        epsilon_high = epsilon_low if epsilon_high is None else epsilon_high
        if advantage not in ADVANTAGES:
            raise ValueError(f"advantage must be one of {tuple(ADVANTAGES)}, got {advantage!r}")
        if ratio_level not in RATIO_LEVELS:
            raise ValueError(f"ratio_level must be one of {RATIO_LEVELS}, got {ratio_level!r}")
        if not 0 < epsilon_low < 1 or epsilon_high <= 0:
            raise ValueError(f"need 0 < epsilon_low < 1 and epsilon_high > 0, got {epsilon_low}, {epsilon_high}")
        if delta is not None and delta <= 1 + epsilon_high:
            raise ValueError(f"delta (dual clip) must be > 1 + epsilon_high = {1 + epsilon_high}, got {delta}")
        self.advantage, self.ratio_level, self.delta = advantage, ratio_level, delta
        self.epsilon_low, self.epsilon_high = epsilon_low, epsilon_high
        # A step can compute group advantages from its own rows (a micro-batch holds whole
        # prompts); batch normalisation needs the whole rollout, so it is computed at sampling.
        self.in_step_advantages = advantage in GROUP_ADVANTAGES

    def prepare(
        self,
        rewards: Tensor,
        logps: Tensor,
        ref_logps: Tensor,
        mask: Tensor,
        num_samples: int,
        values: Tensor | None = None,
    ) -> Experience:
        kl = masked_sum(kl_estimate(logps, ref_logps, self.kl.estimator), mask, dim=1)
        valid = ~rewards.isnan()
        sequence_reward = rewards.nan_to_num(0.0)
        if self.kl.placement == "reward":
            sequence_reward = sequence_reward - float(self.kl_coef) * kl
        advantages = ADVANTAGES[self.advantage](sequence_reward.view(-1, num_samples), valid.view(-1, num_samples))
        return Experience(advantages.reshape(-1, 1) * mask, None, kl, torch.ones_like(valid))

    def forward(
        self,
        batch: RolloutBatch,
        logps: Tensor,
        ref_logps: Tensor | None,
        normalizer: Tensor,
    ) -> ObjectiveOutput:
        mask = batch.loss_mask
        if ref_logps is None:
            assert batch.ref_logps is not None, "GRPO needs the reference's log-probs (a model or the rollout's)"
            ref_logps = batch.ref_logps
        # One on-policy step: this forward's policy sampled the rollout (see RLOO.forward).
        old_logps = logps.detach() if batch.old_logps is None else batch.old_logps
        advantages = batch.advantages
        if advantages is None:
            if not self.in_step_advantages:
                raise ValueError(f"advantage={self.advantage} needs the whole rollout: it cannot be computed in a step")
            counts = torch.bincount(batch.prompt_index, minlength=batch.num_prompts)
            if bool((counts != counts[0]).any()):
                raise ValueError("in-step GRPO advantages need the same number of samples for every prompt")
            advantages = self.prepare(batch.rewards, old_logps, ref_logps, mask, int(counts[0])).advantages
        ratio = importance_ratio(logps, old_logps, mask, self.ratio_level)
        losses, low, high = clipped_policy_loss(ratio, advantages, self.epsilon_low, self.epsilon_high, self.delta)
        # Off the response the stored reference is a 0 filler: compare log π with itself there.
        ref_logps = torch.where(mask.bool(), ref_logps, logps.detach())
        kl = kl_estimate(logps, ref_logps, self.kl.estimator)
        if self.kl.placement == "loss":
            losses = losses + self.kl_coef.to(logps.dtype) * kl
        metrics = {
            "grpo/clip_frac_low": masked_mean(low.float().expand_as(mask), mask),
            "grpo/clip_frac_high": masked_mean(high.float().expand_as(mask), mask),
            "grpo/kl": masked_sum(kl.detach(), mask, dim=1).mean(),
            "grpo/advantage_abs": masked_mean(advantages.abs(), mask),
        }
        total = aggregate(losses.expand_as(mask), mask, self.aggregation, self.max_tokens)
        return ObjectiveOutput(normalize(total, normalizer), metrics)

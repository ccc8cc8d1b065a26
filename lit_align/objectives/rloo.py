"""RLOO: REINFORCE with a leave-one-out baseline, Ahmadian et al. 2024, "Back to Basics:
Revisiting REINFORCE Style Optimization for Learning from Human Feedback in LLMs"
(arXiv 2402.14740).

k samples y_1…y_k per prompt x, each with a sequence reward

    R_i = r(x, y_i) − β·KL_i,     KL_i = Σ_t k(log π_old(y_it) − log π_ref(y_it))

(``kl.placement=reward``, the paper's choice), and the advantage against the mean of the other
samples (eq. 6):

    A_i = R_i − 1/(k − 1) · Σ_{j≠i} R_j

The loss is −A_i·log π(y_i|x) (eq. 5) summed over the response tokens, aggregated by
``aggregation`` (``seq_sum`` is the paper's exact form; ``token_mean`` and ``seq_mean`` rescale
it per token or per sequence). With ``clip`` it becomes PPO's clipped surrogate with the ratio
π/π_old, which equals the plain gradient on-policy and keeps later update epochs on the same
rollout from moving too far. With ``kl.placement=loss`` the reward is r alone and
β·k(log π − log π_ref) is added to the loss per token instead.

Unscorable samples (reward ``None``) are left out of every baseline and get advantage 0; a
prompt with a single scorable sample has no baseline and its samples get advantage 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_align.data.batch import RolloutBatch
from lit_align.objectives.base import ObjectiveOutput
from lit_align.objectives.policy_gradient import Experience, KLPenalty, PolicyGradientObjective
from lit_align.objectives.reduce import masked_mean, masked_sum, normalize
from lit_align.objectives.rl import aggregate, clipped_surrogate, kl_estimate, rloo_advantages


class RLOO(PolicyGradientObjective):
    """RLOO over rollout rows.

    Args:
        kl: the KL penalty (coefficient, estimator, placement, controller).
        clip: PPO ratio clipping ε; ``None`` uses the plain REINFORCE loss −A·log π.
        aggregation: ``token_mean`` (default), ``seq_mean`` or ``seq_sum`` (the paper's sum
            over tokens); see `lit_align.objectives.rl.aggregate`.
    """

    in_step_advantages = True

    def __init__(self, kl: KLPenalty | None = None, clip: float | None = 0.2, aggregation: str = "token_mean") -> None:
        super().__init__(kl or KLPenalty(), aggregation)
        if clip is not None and clip <= 0:
            raise ValueError(f"clip must be > 0 or null, got {clip}")
        self.clip = clip

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
        advantages = rloo_advantages(sequence_reward.view(-1, num_samples), valid.view(-1, num_samples))
        # Unscorable samples stay as rows with advantage 0: they count in the normalizer and,
        # with placement=loss, in the KL term.
        return Experience(advantages.view(-1, 1) * mask, None, kl, torch.ones_like(valid))

    def forward(
        self,
        batch: RolloutBatch,
        logps: Tensor,
        ref_logps: Tensor | None,
        normalizer: Tensor,
    ) -> ObjectiveOutput:
        mask = batch.loss_mask
        if ref_logps is None:
            assert batch.ref_logps is not None, "RLOO needs the reference's log-probs (a model or the rollout's)"
            ref_logps = batch.ref_logps
        # One on-policy step: this forward's policy sampled the rollout, so its detached
        # log-probs are the sampling policy's (no separate scoring forward was run).
        old_logps = logps.detach() if batch.old_logps is None else batch.old_logps
        advantages = batch.advantages
        if advantages is None:
            counts = torch.bincount(batch.prompt_index, minlength=batch.num_prompts)
            if bool((counts != counts[0]).any()):
                raise ValueError("in-step RLOO advantages need the same number of samples for every prompt")
            advantages = self.prepare(batch.rewards, old_logps, ref_logps, mask, int(counts[0])).advantages
        metrics = {}
        if self.clip is None:
            losses = -advantages * logps
        else:
            losses, clipped = clipped_surrogate(logps, old_logps, advantages, self.clip)
            metrics["rloo/clip_frac"] = masked_mean(clipped.float(), mask)
        # Off the response the stored reference is a 0 filler: compare log π with itself there,
        # so k3's exp cannot overflow on a prompt token (inf · 0 would make the loss NaN).
        ref_logps = torch.where(mask.bool(), ref_logps, logps.detach())
        kl = kl_estimate(logps, ref_logps, self.kl.estimator)
        if self.kl.placement == "loss":
            losses = losses + self.kl_coef.to(logps.dtype) * kl
        metrics["rloo/kl"] = masked_sum(kl.detach(), mask, dim=1).mean()
        metrics["rloo/advantage_abs"] = masked_mean(advantages.abs(), mask)
        return ObjectiveOutput(normalize(aggregate(losses, mask, self.aggregation), normalizer), metrics)

"""PPO for language models: Schulman et al. 2017 (arXiv 1707.06347), as applied to LMs by
Ziegler et al. 2019 (arXiv 1909.08593) and Ouyang et al. 2022 (arXiv 2203.02155).

Per-token reward: the KL penalty at every response token, plus the sequence reward at the last
(eos, or the last token of a truncated response):

    r_t = −β·k(log π_old(y_t) − log π_ref(y_t)) + [t = T]·r(x, y)

Advantages by GAE(γ, λ) over the critic's values V_old (`lit_align.objectives.rl.gae`),
optionally whitened over the rollout; returns = A + V_old. Loss per response token:

    ℓ_t = −min(ρ_t·A_t, clip(ρ_t, 1 ± ε)·A_t) + c_v·½·max((V − R)², (V_clip − R)²) − c_H·H_t

with ρ_t = π/π_old and V_clip = V_old + clip(V − V_old, ±ε_v), aggregated by ``aggregation``.
β is fixed or follows the adaptive controller. Unscorable samples (reward ``None``) are not
trained on: they have no final reward to assign.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_align.data.batch import RolloutBatch
from lit_align.objectives.base import ObjectiveOutput
from lit_align.objectives.policy_gradient import Experience, KLPenalty, PolicyGradientObjective
from lit_align.objectives.reduce import masked_mean, normalize
from lit_align.objectives.rl import (
    aggregate,
    clipped_surrogate,
    clipped_value_loss,
    explained_variance,
    gae,
    kl_estimate,
    whiten,
)  # fmt: skip


class PPO(PolicyGradientObjective):
    """PPO with a critic over rollout rows.

    Args:
        kl: the per-token KL penalty in the reward (``placement`` must be ``reward``);
            ``controller: adaptive`` moves β towards ``kl.target``.
        clip: ratio clipping ε of the surrogate.
        value_clip: ε_v of the value loss; ``None`` for the plain squared error.
        vf_coef: c_v, the value loss weight.
        entropy_coef: c_H, the entropy bonus weight (0: entropy is only logged).
        gamma, lam: GAE's discount γ and λ.
        whiten_advantages: normalise advantages to zero mean, unit variance over the rollout.
        critic: ``shared`` (a value head on the policy's last hidden state) or ``separate`` (a
            copy of the policy's trunk with its own head); both start from the policy.
        critic_lr_scale: the critic's learning rate as a multiple of the policy's: its head
            starts from scratch and a critic that lags gives noisy advantages.
        aggregation: ``token_mean`` (default), ``seq_mean`` or ``seq_sum``.
    """

    needs_values = True
    needs_entropy = True

    def __init__(
        self,
        kl: KLPenalty | None = None,
        clip: float = 0.2,
        value_clip: float | None = 0.2,
        vf_coef: float = 0.1,
        entropy_coef: float = 0.0,
        gamma: float = 1.0,
        lam: float = 0.95,
        whiten_advantages: bool = True,
        critic: str = "shared",
        critic_lr_scale: float = 10.0,
        aggregation: str = "token_mean",
    ) -> None:
        super().__init__(kl or KLPenalty(), aggregation)
        if self.kl.placement != "reward":
            raise ValueError("PPO puts the KL penalty in the per-token reward: kl.placement must be reward")
        if clip <= 0 or (value_clip is not None and value_clip <= 0):
            raise ValueError(f"clip and value_clip must be > 0, got {clip}, {value_clip}")
        if vf_coef < 0 or entropy_coef < 0:
            raise ValueError(f"vf_coef and entropy_coef must be >= 0, got {vf_coef}, {entropy_coef}")
        if not (0 <= gamma <= 1 and 0 <= lam <= 1):
            raise ValueError(f"gamma and lam must be in [0, 1], got {gamma}, {lam}")
        if critic not in ("shared", "separate"):
            raise ValueError(f"critic must be shared or separate, got {critic!r}")
        self.clip, self.value_clip, self.vf_coef, self.entropy_coef = clip, value_clip, vf_coef, entropy_coef
        if critic_lr_scale <= 0:
            raise ValueError(f"critic_lr_scale must be > 0, got {critic_lr_scale}")
        self.gamma, self.lam, self.whiten_advantages, self.critic = gamma, lam, whiten_advantages, critic
        self.critic_lr_scale = critic_lr_scale
        self.entropy_grad = entropy_coef > 0

    def prepare(
        self,
        rewards: Tensor,
        logps: Tensor,
        ref_logps: Tensor,
        mask: Tensor,
        num_samples: int,
        values: Tensor | None = None,
    ) -> Experience:
        if values is None:
            raise ValueError("PPO needs the critic's values of the rollout")
        keep = ~rewards.isnan()
        kl = kl_estimate(logps, ref_logps, self.kl.estimator) * mask  # every sample's, for the controller
        mask = mask * keep[:, None].to(mask.dtype)  # unscorable samples: no reward to propagate
        token_rewards = -float(self.kl_coef) * kl * mask
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (positions * mask).argmax(dim=1)  # the last response token of each row
        token_rewards[torch.arange(len(mask)), last] += rewards.nan_to_num(0.0) * keep
        advantages, returns = gae(token_rewards, values, mask, self.gamma, self.lam)
        if self.whiten_advantages:
            advantages = whiten(advantages, mask)
        return Experience(advantages, returns, kl.sum(dim=1), keep)

    def forward(
        self,
        batch: RolloutBatch,
        logps: Tensor,
        ref_logps: Tensor | None,
        normalizer: Tensor,
        values: Tensor | None = None,
        entropy: Tensor | None = None,
    ) -> ObjectiveOutput:
        assert values is not None and entropy is not None, "the module passes PPO the critic's values and entropy"
        mask = batch.loss_mask
        old_logps, returns, advantages = batch.old_logps, batch.returns, batch.advantages
        assert old_logps is not None and returns is not None and advantages is not None and batch.old_values is not None
        policy_losses, clipped = clipped_surrogate(logps, old_logps, advantages, self.clip)
        value_losses = clipped_value_loss(values, batch.old_values, returns, self.value_clip)
        total = aggregate(policy_losses, mask, self.aggregation)
        total = total + self.vf_coef * aggregate(value_losses, mask, self.aggregation)
        if self.entropy_coef:
            total = total - self.entropy_coef * aggregate(entropy, mask, self.aggregation)
        with torch.no_grad():
            metrics = {
                "ppo/policy_loss": masked_mean(policy_losses, mask),
                "ppo/value_loss": masked_mean(value_losses, mask),
                # ½·(log ρ)² (k2) over the rollout's tokens, as OpenAI baselines and TRL report
                # it: how far the updates since sampling have moved the policy.
                "ppo/approx_kl": masked_mean(kl_estimate(old_logps, logps, "k2"), mask),
                "ppo/clip_frac": masked_mean(clipped.float(), mask),
                "ppo/explained_var": explained_variance(values, returns, mask),
                "ppo/entropy": masked_mean(entropy, mask),
                "ppo/value_mean": masked_mean(values, mask),
            }
        return ObjectiveOutput(normalize(total, normalizer), metrics)

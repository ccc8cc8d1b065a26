"""The parts the GRPO family is assembled from, each a pure function with its paper's equation:
advantages from a group's (or the batch's) rewards, the importance ratio per token or per
sequence, and the clipped surrogate with decoupled bounds and an optional dual clip.

Advantages take ``rewards`` and ``valid``, both ``(prompts, k)`` with the k samples of a prompt
in a row; an unscorable sample (``valid`` false) gets advantage 0 and is left out of every mean
and standard deviation. Aggregation lives in `lit_align.objectives.rl.aggregate`, KL estimators
in `lit_align.objectives.rl.kl_estimate`; leave-one-out is `lit_align.objectives.rl.rloo_advantages`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lit_align.objectives.reduce import masked_mean
from lit_align.objectives.rl import rloo_advantages

# Added to a standard deviation before dividing by it, as TRL 1.16 does
# (trl/trainer/grpo_trainer.py:2787, ``advantages / (std_rewards + 1e-4)``).
STD_EPS = 1e-4


def _valid_stats(rewards: Tensor, valid: Tensor, dim: int | None) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, unbiased standard deviation and count of the valid rewards over ``dim`` (kept)."""
    valid = valid.bool()
    w = valid.to(rewards.dtype)
    r = torch.where(valid, rewards, torch.zeros_like(rewards))
    if dim is None:
        n, total = w.sum(), r.sum()
    else:
        n, total = w.sum(dim, keepdim=True), r.sum(dim, keepdim=True)
    mean = total / n.clamp(min=1)
    squares = ((r - mean).square() * w).sum() if dim is None else ((r - mean).square() * w).sum(dim, keepdim=True)
    std = (squares / (n - 1).clamp(min=1)).sqrt()  # Bessel's correction, as torch.std and TRL's nanstd
    return mean, std, n


def group_std_advantages(rewards: Tensor, valid: Tensor, eps: float = STD_EPS) -> Tensor:
    """GRPO's outcome advantage, Shao et al. 2024 (arXiv 2402.03300), §4.1.2:

        Â_i = (r_i − mean(r)) / (std(r) + ε)      over the valid samples of a prompt,

    std with Bessel's correction and ε = 1e-4 as TRL's ``scale_rewards="group"``. Ties give 0
    (all samples equal: r_i − mean = 0); a prompt with fewer than two valid samples has no
    standard deviation and gets 0.

    Args:
        rewards, valid: ``(prompts, k)``. Returns ``(prompts, k)``.
    """
    mean, std, n = _valid_stats(rewards, valid, dim=1)
    advantages = (rewards - mean) / (std + eps)
    return torch.where(valid.bool() & (n >= 2), advantages, torch.zeros_like(advantages))


def group_mean_advantages(rewards: Tensor, valid: Tensor) -> Tensor:
    """Dr. GRPO's advantage, Liu et al. 2025 (arXiv 2503.20783), the Dr. GRPO objective (GRPO without the std,
    whose division up-weights prompts that are nearly always right or wrong):

        Â_i = r_i − mean(r)      over the valid samples of a prompt.

    TRL's ``scale_rewards="none"``. A prompt with one valid sample gets 0 (r_i − r_i).

    Args:
        rewards, valid: ``(prompts, k)``. Returns ``(prompts, k)``.
    """
    mean, _, n = _valid_stats(rewards, valid, dim=1)
    advantages = rewards - mean
    return torch.where(valid.bool() & (n >= 2), advantages, torch.zeros_like(advantages))


def batch_std_advantages(rewards: Tensor, valid: Tensor, eps: float = STD_EPS) -> Tensor:
    """REINFORCE++'s global advantage normalisation, Hu 2025 (arXiv 2501.03262), its advantage normalisation:

        A_i^norm = (A_i − mean_B(A)) / (std_B(A) + ε),   A_i = r_i      over the whole batch B

    (the paper's β·KL penalty is in ``r`` when ``kl.placement=reward``). No group
    baseline: a one-sample group's sample is scored against the batch. Needs the whole rollout,
    so it is computed once per rollout, never inside a step. Fewer than two valid samples in
    the batch give 0.

    Args:
        rewards, valid: ``(prompts, k)``. Returns ``(prompts, k)``.
    """
    mean, std, n = _valid_stats(rewards, valid, dim=None)
    advantages = (rewards - mean) / (std + eps)
    return torch.where(valid.bool() & (n >= 2), advantages, torch.zeros_like(advantages))


def group_batch_std_advantages(rewards: Tensor, valid: Tensor, eps: float = STD_EPS) -> Tensor:
    """REINFORCE++-baseline, Hu 2025 (arXiv 2501.03262, REINFORCE++ with a baseline): the group mean as the
    baseline, then the batch's normalisation over the centred values:

        A_i = r_i − mean_group(r),    A_i^norm = (A_i − mean_B(A)) / (std_B(A) + ε).

    Samples of prompts with fewer than two valid samples are 0 and left out of the batch
    statistics (they have no baseline).

    Args:
        rewards, valid: ``(prompts, k)``. Returns ``(prompts, k)``.
    """
    centred = group_mean_advantages(rewards, valid)
    _, _, n = _valid_stats(rewards, valid, dim=1)
    return batch_std_advantages(centred, valid.bool() & (n >= 2), eps)


ADVANTAGES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "rloo": rloo_advantages,
    "group_std": group_std_advantages,
    "group_mean": group_mean_advantages,
    "batch_std": batch_std_advantages,
    "group_batch_std": group_batch_std_advantages,
}
# Those that need only each prompt's own samples (a step can compute them from its rows).
GROUP_ADVANTAGES = ("rloo", "group_std", "group_mean")
RATIO_LEVELS = ("token", "sequence")


def importance_ratio(logps: Tensor, old_logps: Tensor, mask: Tensor, level: str) -> Tensor:
    """The importance ratio of the current policy to the sampling one.

    - ``token`` (PPO, GRPO): ρ_t = π(y_t | x, y_<t) / π_old(y_t | x, y_<t), ``(rows, T)``;
    - ``sequence`` (GSPO, Zheng et al. 2025, arXiv 2507.18071, the definition of s_i(θ)): the length-normalised
      sequence ratio s_i = (π(y_i|x) / π_old(y_i|x))^(1/|y_i|) = exp(1/|y_i| Σ_t log ρ_t),
      ``(rows, 1)``, so a sequence is clipped, kept or dropped as a whole.

    ``logps``, ``old_logps``, ``mask``: ``(rows, T)``; ``mask`` 1 on response tokens.
    """
    log_ratio = logps - old_logps
    if level == "token":
        return torch.exp(log_ratio)
    if level == "sequence":
        return torch.exp(masked_mean(log_ratio, mask, dim=1)).unsqueeze(1)
    raise ValueError(f"ratio level must be one of {RATIO_LEVELS}, got {level!r}")


def clipped_policy_loss(
    ratio: Tensor, advantages: Tensor, epsilon_low: float, epsilon_high: float, dual_clip: float | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """The clipped surrogate as a loss, with DAPO's decoupled bounds ("clip-higher", Yu et al.
    2025, arXiv 2503.14476, §3.1) and the dual clip of Ye et al. 2020 (arXiv 1912.09729, dual-clip PPO):

        ℓ = −min(ρ·A, clip(ρ, 1 − ε_low, 1 + ε_high)·A)
        ℓ = min(ℓ, −c·A)   where A < 0 (with ``dual_clip`` c > 1: a negative advantage's loss
                           stops growing with ρ, however far the policy moved)

    ε_low = ε_high is PPO's symmetric clip (Schulman et al. 2017, eq. 7).

    Args:
        ratio: ``(rows, T)`` per-token ratios or ``(rows, 1)`` per-sequence ones.
        advantages: ``(rows, T)``.

    Returns:
        ``(ℓ, clipped_low, clipped_high)``, each broadcast to ``(rows, T)``: the per-token loss
        and where the lower bound (ρ < 1 − ε_low, A < 0) or the upper one (ρ > 1 + ε_high,
        A > 0) is active, so no gradient flows (TRL's ``clip_ratio/low`` and ``/high``).
    """
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - epsilon_low, 1 + epsilon_high)
    losses = torch.maximum(unclipped, clipped)
    if dual_clip is not None:
        losses = torch.where(advantages < 0, torch.minimum(losses, -dual_clip * advantages), losses)
    clipped_low = (ratio < 1 - epsilon_low) & (advantages < 0)
    clipped_high = (ratio > 1 + epsilon_high) & (advantages > 0)
    return losses, clipped_low, clipped_high

"""Pure functions of the policy-gradient objectives (RLOO, PPO): KL estimators, advantages,
returns and clipped losses.

Tensors are response-aligned: ``(rows, T)`` with ``mask`` 1 on the response tokens a row
scores. Per-token losses are reduced by `aggregate` into a *sum* over the micro-batch that the
objective divides by the step's normalizer (see `lit_align.objectives.reduce`), so every
aggregation is invariant to micro-batching, accumulation and device count.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_align.objectives.reduce import masked_mean, masked_sum

KL_ESTIMATORS = ("k1", "k2", "k3")
AGGREGATIONS = ("token_mean", "seq_mean", "seq_sum", "token_sum")


def kl_estimate(logps: Tensor, ref_logps: Tensor, estimator: str) -> Tensor:
    """Per-token estimate of KL(π‖π_ref) from tokens sampled from π (Schulman, "Approximating KL
    divergence", 2020), with log-ratio d = log π − log π_ref:

    - ``k1`` = d (unbiased, high variance, can be negative);
    - ``k2`` = d²/2 (biased, low variance; its gradient is the KL's gradient on-policy);
    - ``k3`` = exp(−d) − 1 + d (unbiased, always ≥ 0; GRPO's choice).

    ``logps``, ``ref_logps``: ``(…)`` log-probs of the same tokens; returns ``(…)``.
    """
    d = logps - ref_logps
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * d.square()
    if estimator == "k3":
        return torch.expm1(-d) + d
    raise ValueError(f"kl estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")


def rloo_advantages(rewards: Tensor, valid: Tensor) -> Tensor:
    """REINFORCE leave-one-out advantages, Ahmadian et al. 2024 (arXiv 2402.14740), eq. 6:

        A_i = R_i − 1/(n − 1) · Σ_{j ≠ i} R_j      over the n valid samples of a prompt.

    Args:
        rewards: ``(prompts, k)`` sequence rewards R (any value where not valid).
        valid: ``(prompts, k)`` bool, false for unscorable samples.

    Returns:
        ``(prompts, k)``; 0 for invalid samples, which are also left out of every baseline, and
        0 for all samples of a prompt with fewer than two valid ones (no baseline exists).
    """
    valid = valid.bool()
    r = torch.where(valid, rewards, torch.zeros_like(rewards))
    n = valid.sum(dim=1, keepdim=True)
    others = (r.sum(dim=1, keepdim=True) - r) / (n - 1).clamp(min=1)
    return torch.where(valid & (n >= 2), r - others, torch.zeros_like(r))


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation, Schulman et al. 2016 (arXiv 1506.02438), eq. 16:

        δ_t = r_t + γ·V_{t+1} − V_t,    A_t = δ_t + γλ·A_{t+1},    returns_t = A_t + V_t

    over each row's masked positions, which must be contiguous (a response); the value after
    the last one is 0 (the episode ends at eos or the token budget).

    Args:
        rewards, values: ``(rows, T)`` per-token rewards and value estimates V(s_t).
        mask: ``(rows, T)`` 1 on response tokens.

    Returns:
        ``(advantages, returns)``, each ``(rows, T)``, 0 outside the mask.
    """
    mask = mask.to(values.dtype)
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = advantage * m
        # Outside the response, carry nothing backwards: the row ended (or has not begun).
        next_value = values[:, t] * m
        next_advantage = advantage * m
    return advantages, (advantages + values) * mask


def whiten(values: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """``values`` scaled to unit variance (and zero mean if ``shift_mean``) over the masked
    entries; 0 outside the mask. Fewer than two entries are only centred."""
    mask = mask.to(values.dtype)
    mean = masked_mean(values, mask)
    count = mask.sum()
    variance = masked_sum((values - mean).square(), mask) / (count - 1).clamp(min=1)
    scaled = (values - mean) * torch.rsqrt(variance + 1e-8) if count > 1 else values - mean
    if not shift_mean:
        scaled = scaled + mean
    return scaled * mask


def clipped_surrogate(logps: Tensor, old_logps: Tensor, advantages: Tensor, clip: float) -> tuple[Tensor, Tensor]:
    """PPO's clipped surrogate, Schulman et al. 2017 (arXiv 1707.06347), eq. 7, as a loss:

        ρ_t = exp(log π − log π_old),   ℓ_t = −min(ρ_t·A_t, clip(ρ_t, 1 − ε, 1 + ε)·A_t)

    All arguments ``(rows, T)``. Returns ``(ℓ, clipped)``: per-token losses and a bool tensor,
    true where the clipped term is the active one (no gradient flows there).
    """
    ratio = torch.exp(logps - old_logps)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip, 1 + clip)
    return torch.maximum(unclipped, clipped), clipped > unclipped


def clipped_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, clip: float | None) -> Tensor:
    """The value loss of PPO implementations (Huang et al. 2022, "The 37 implementation details
    of PPO", detail 9): ½·max((V − R)², (V_old + clip(V − V_old, −ε, ε) − R)²), or ½·(V − R)²
    with ``clip=None``. All arguments and the result ``(rows, T)``."""
    loss = (values - returns).square()
    if clip is not None:
        clipped = old_values + (values - old_values).clamp(-clip, clip)
        loss = torch.maximum(loss, (clipped - returns).square())
    return 0.5 * loss


def aggregate(losses: Tensor, mask: Tensor, aggregation: str, max_tokens: int | None = None) -> Tensor:
    """The micro-batch's share of a step loss, before division by the step's normalizer:

    - ``token_mean``: Σ_{i,t} ℓ_it, normalised by the step's response tokens (every token
      weighs the same; DAPO, TRL's default);
    - ``seq_mean``: Σ_i (1/|y_i|) Σ_t ℓ_it, normalised by the step's sequences (each sequence
      weighs the same; GRPO);
    - ``seq_sum``: Σ_{i,t} ℓ_it, normalised by the step's sequences (the sequence log-likelihood
      of the REINFORCE/RLOO papers: −A_i·log π(y_i|x) summed over tokens);
    - ``token_sum``: Σ_{i,t} ℓ_it / L, normalised by the step's sequences, with L =
      ``max_tokens`` a constant (the generation budget): Dr. GRPO (Liu et al. 2025, arXiv
      2503.20783), which divides by a constant so no response's tokens weigh more for being
      short; TRL's ``loss_type="dr_grpo"`` (``/ (rows · max_completion_length)``).

    ``losses``, ``mask``: ``(rows, T)``; returns a scalar.
    """
    if aggregation == "seq_mean":
        return masked_mean(losses, mask, dim=1).sum()
    if aggregation in ("token_mean", "seq_sum"):
        return masked_sum(losses, mask)
    if aggregation == "token_sum":
        if not max_tokens or max_tokens < 1:
            raise ValueError(f"aggregation token_sum divides by a constant max_tokens >= 1, got {max_tokens}")
        return masked_sum(losses, mask) / max_tokens
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")


def aggregation_units(mask: Tensor, aggregation: str) -> Tensor:
    """What `aggregate`'s sum is divided by, counted in one micro-batch: response tokens for
    ``token_mean``, sequences with a response token otherwise."""
    if aggregation == "token_mean":
        return mask.sum()
    return (mask.sum(dim=1) > 0).sum()


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """1 − Var(R − V)/Var(R) over masked tokens: 1 is a perfect critic, 0 a constant one."""
    var_returns = masked_mean((returns - masked_mean(returns, mask)).square(), mask)
    residual = returns - values
    var_residual = masked_mean((residual - masked_mean(residual, mask)).square(), mask)
    return 1 - var_residual / var_returns.clamp(min=1e-8)

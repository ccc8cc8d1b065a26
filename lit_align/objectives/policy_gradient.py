"""What RLOO and PPO share: the KL penalty settings and controller, and the rollout contract.

A policy-gradient objective works in two places:

1. ``prepare``, once per rollout, when online sampling has scored the samples: from rewards and
   the sampling policy's, the reference's (and the critic's) per-token values it computes the
   advantages (and returns) that stay fixed while the rollout is trained on.
2. ``forward``, every micro-batch of every update epoch, on rollout rows (a `RolloutBatch`,
   see `lit_align.data.formats.RolloutFormat`) carrying those tensors.

When a rollout is trained on in a single on-policy optimizer step, the sampling policy *is*
the policy of that step: an objective whose advantages need only the samples of one prompt
(``in_step_advantages``, RLOO) then computes them in ``forward`` from the step's own forward,
detached, and online sampling skips its separate scoring forward (`OnlineSampling`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from lit_align.data.batch import RolloutBatch
from lit_align.data.formats import FORMATS
from lit_align.objectives.base import Objective
from lit_align.objectives.rl import AGGREGATIONS, KL_ESTIMATORS, aggregation_units


@dataclass
class KLPenalty:
    """How far the policy may move from the reference, and how that is charged.

    Frameworks differ here without saying so; every choice is explicit.
    """

    coef: float = 0.05
    """β, the KL coefficient (the starting value with the adaptive controller)."""
    estimator: str = "k1"
    """Per-token KL estimate from d = log π − log π_ref: ``k1`` = d, ``k2`` = d²/2 or ``k3`` =
    π_ref/π − 1 − log(π_ref/π); see `lit_align.objectives.rl.kl_estimate`."""
    placement: str = "reward"
    """``reward``: β·KL is subtracted from the reward before advantages (RLOO paper; PPO's
    per-token penalty); ``loss``: a separate β·KL term in the loss, with gradient (GRPO; RLOO
    only). In the loss, ``k1``'s gradient is zero in expectation: use ``k2`` or ``k3`` there."""
    controller: str = "fixed"
    """``fixed`` keeps β; ``adaptive`` moves it towards ``target`` (Ziegler et al. 2019)."""
    target: float = 6.0
    """Adaptive: the sequence KL (nats, summed over tokens) to hold."""
    horizon: int = 10000
    """Adaptive: samples over which a 20% error moves β by 20%."""

    def __post_init__(self) -> None:
        if self.coef < 0:
            raise ValueError(f"kl.coef must be >= 0, got {self.coef}")
        if self.estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl.estimator must be one of {KL_ESTIMATORS}, got {self.estimator!r}")
        if self.placement not in ("reward", "loss"):
            raise ValueError(f"kl.placement must be reward or loss, got {self.placement!r}")
        if self.controller not in ("fixed", "adaptive"):
            raise ValueError(f"kl.controller must be fixed or adaptive, got {self.controller!r}")
        if self.target <= 0 or self.horizon < 1:
            raise ValueError(f"kl.target must be > 0 and kl.horizon >= 1, got {self.target}, {self.horizon}")


def adaptive_kl_coef(coef: float, kl: float, target: float, horizon: int, num_samples: int) -> float:
    """Ziegler et al. 2019 (arXiv 1909.08593), §2.2: with e = clip(KL/target − 1, −0.2, 0.2),
    β ← β·(1 + e·n/horizon), n the samples of the rollout that measured ``kl``."""
    error = min(max(kl / target - 1, -0.2), 0.2)
    return coef * (1 + error * num_samples / horizon)


class Experience(NamedTuple):
    """What ``prepare`` makes of one rollout of ``N`` samples with responses up to ``T`` tokens.

    Attributes:
        advantages: ``(N, T)`` per-token advantages, 0 outside the response.
        returns: ``(N, T)`` value targets (PPO), or ``None``.
        kl: ``(N,)`` each sample's KL to the reference, Σ_t of the configured estimator.
        keep: ``(N,)`` bool, the samples that become training rows.
    """

    advantages: Tensor
    returns: Tensor | None
    kl: Tensor
    keep: Tensor


class PolicyGradientObjective(Objective):
    """Base of RLOO and PPO: rollout rows, a frozen reference, the KL coefficient as state.

    ``kl_coef`` is a buffer, so the adaptive controller's β is checkpointed and resumed.
    """

    row_format = FORMATS["rollout"]
    needs_reference = True
    # Whether ``forward`` can compute the advantages itself from a rollout batch without them:
    # true when they depend only on the samples of each prompt (a micro-batch holds whole prompts).
    in_step_advantages: bool = False

    def __init__(self, kl: KLPenalty, aggregation: str, max_tokens: int | None = None) -> None:
        super().__init__()
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        if aggregation == "token_sum" and (max_tokens is None or max_tokens < 1):
            raise ValueError(f"aggregation token_sum divides by max_tokens (the generation budget), got {max_tokens}")
        self.kl, self.aggregation, self.max_tokens = kl, aggregation, max_tokens
        self.register_buffer("kl_coef", torch.tensor(float(kl.coef)))

    def normalizer(self, batch: RolloutBatch) -> Tensor:
        return aggregation_units(batch.loss_mask, self.aggregation)

    def prepare(
        self,
        rewards: Tensor,
        logps: Tensor,
        ref_logps: Tensor,
        mask: Tensor,
        num_samples: int,
        values: Tensor | None = None,
    ) -> Experience:
        """Advantages of one rollout.

        Args:
            rewards: ``(N,)`` the reward of each sample, NaN where unscorable; the ``k =
                num_samples`` samples of a prompt are adjacent.
            logps, ref_logps: ``(N, T)`` the sampling policy's and the reference's log-probs
                of each response token.
            mask: ``(N, T)`` 1 on response tokens.
            values: ``(N, T)`` the critic's V(s_t) at each response token (PPO).
        """
        raise NotImplementedError

    def update_kl_coef(self, kl: float, num_samples: int) -> None:
        """After a rollout whose mean sequence KL (over every rank) was ``kl``."""
        if self.kl.controller == "adaptive" and math.isfinite(kl):
            coef = adaptive_kl_coef(float(self.kl_coef), kl, self.kl.target, self.kl.horizon, num_samples)
            self.kl_coef.fill_(coef)

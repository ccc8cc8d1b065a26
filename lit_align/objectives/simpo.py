"""SimPO: a length-normalised implicit reward with a target margin, and no reference model.

Meng, Xia & Chen 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward"
(arXiv 2405.14734), Eq. 6: with the average log-likelihood of a response as its reward,

    L = −log σ( β/|y_w| · log π(y_w|x) − β/|y_l| · log π(y_l|x) − γ ),

and with label smoothing ε (as TRL's CPO trainer offers for ``loss_type="simpo"``):
−(1−ε)·log σ(h) − ε·log σ(−h), h the argument above.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_align.data.batch import PairBatch
from lit_align.data.formats import FORMATS
from lit_align.objectives.base import Objective, ObjectiveOutput
from lit_align.objectives.reduce import masked_mean, normalize


def simpo_losses(
    chosen_avg: Tensor, rejected_avg: Tensor, beta: float, gamma: float, label_smoothing: float = 0.0
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pair SimPO losses and the implicit rewards.

    Args:
        chosen_avg, rejected_avg: ``(pairs,)`` (1/|y|)·log π(y|x), the token mean of each
            response's log-probs.
        beta: β (> 0), the reward scale.
        gamma: γ, the target reward margin.
        label_smoothing: ε, the assumed rate of flipped labels.

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``, each ``(pairs,)``; the rewards are
        β·(1/|y|)·log π(y|x), detached.
    """
    h = beta * (chosen_avg - rejected_avg) - gamma
    losses = -(1 - label_smoothing) * F.logsigmoid(h) - label_smoothing * F.logsigmoid(-h)
    return losses, beta * chosen_avg.detach(), beta * rejected_avg.detach()


class SimPO(Objective):
    """SimPO over a batch of pairs, averaged over the pairs of the optimizer step; no reference.

    Args:
        beta: β, the reward scale (the paper uses 2.0–2.5).
        gamma: γ, the target margin (the paper tunes γ/β around 0.5).
        label_smoothing: ε in [0, 0.5).
    """

    row_format = FORMATS["pairs"]

    def __init__(self, beta: float = 2.0, gamma: float = 1.0, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        if not 0 <= label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
        self.beta, self.gamma, self.label_smoothing = beta, gamma, label_smoothing

    def normalizer(self, batch: PairBatch) -> Tensor:
        return torch.tensor(len(batch.chosen), device=batch.chosen.device)

    def forward(self, batch: PairBatch, logps: Tensor, ref_logps: Tensor | None, normalizer: Tensor) -> ObjectiveOutput:
        avg = masked_mean(logps, batch.loss_mask, dim=1)  # (responses,) (1/|y|) log π(y|x)
        chosen, rejected = avg[batch.chosen], avg[batch.rejected]
        losses, chosen_rewards, rejected_rewards = simpo_losses(
            chosen, rejected, self.beta, self.gamma, self.label_smoothing
        )
        metrics = {
            "rewards/chosen": chosen_rewards.mean(),
            "rewards/rejected": rejected_rewards.mean(),
            "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
            "logps/chosen": chosen.detach().mean(),
            "logps/rejected": rejected.detach().mean(),
        }
        return ObjectiveOutput(normalize(losses.sum(), normalizer), metrics)

"""SimPO: a length-normalised implicit reward with a target margin, and no reference model.

Meng, Xia & Chen 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward"
(arXiv 2405.14734), Eq. 6: with the average log-likelihood of a response as its reward,

    L = −log σ( β/|y_w| · log π(y_w|x) − β/|y_l| · log π(y_l|x) − γ ),

and with label smoothing ε (as TRL's CPO trainer offers for ``loss_type="simpo"``):
−(1−ε)·log σ(h) − ε·log σ(−h), h the argument above.

With ``sft_weight`` α > 0 the chosen responses' NLL is added (CPO-SimPO: CPO's behaviour-cloning
term, which TRL's ``CPOTrainer`` adds to ``loss_type="simpo"`` with ``cpo_alpha`` = 1 by default;
`lit_align.objectives.anchor`). The paper's SimPO is α = 0, the code default.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from lit_align.data.batch import PairBatch
from lit_align.data.formats import FORMATS
from lit_align.objectives.anchor import check_normalization, chosen_nll, step_normalizer
from lit_align.objectives.base import Objective, ObjectiveOutput
from lit_align.objectives.reduce import masked_mean, normalize, rows_of


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
        sft_weight: α, the weight of the chosen responses' NLL; 0 (default) is the paper's SimPO.
        sft_normalize: ``token`` (default: the mean over the step's chosen tokens, CPO's and
            TRL's cross-entropy) or ``pair`` (each chosen response's token mean, averaged).
    """

    row_format = FORMATS["pairs"]

    def __init__(
        self,
        beta: float = 2.0,
        gamma: float = 1.0,
        label_smoothing: float = 0.0,
        sft_weight: float = 0.0,
        sft_normalize: str = "token",
    ) -> None:
        super().__init__()
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        if not 0 <= label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
        if sft_weight < 0:
            raise ValueError(f"sft_weight must be >= 0, got {sft_weight}")
        check_normalization(sft_normalize)
        self.beta, self.gamma, self.label_smoothing = beta, gamma, label_smoothing
        self.sft_weight, self.sft_normalize = sft_weight, sft_normalize

    def normalizer(self, batch: PairBatch) -> Tensor:
        return step_normalizer(batch, self.sft_weight, self.sft_normalize)

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
        loss = normalize(losses.sum(), rows_of(normalizer))
        if self.sft_weight:
            nll, metrics["logps/chosen_nll"] = chosen_nll(batch, logps, normalizer, self.sft_normalize)
            loss = loss + self.sft_weight * nll
        return ObjectiveOutput(loss, metrics)

"""ORPO: supervised fine-tuning plus an odds-ratio preference term, with no reference model.

Hong, Lee & Thorne 2024, "ORPO: Monolithic Preference Optimization without Reference Model"
(arXiv 2403.07691), Eqs. 4–7: with P(y|x) = exp((1/|y|)·log π(y|x)), the length-normalised
likelihood, and odds(y|x) = P / (1 − P),

    L = L_SFT + λ · L_OR,    L_OR = −log σ( log odds(y_w|x) − log odds(y_l|x) ),

L_SFT the negative log-likelihood of the chosen response. log odds = log P − log(1 − P) is
computed as in TRL (``trl/experimental/orpo/orpo_trainer.py``, ``log1mexp`` and
``odds_ratio_loss``), with log(1 − e^a) evaluated stably.

Deliberate differences from TRL 1.16's ORPO trainer (``concatenated_forward``): TRL's L_SFT is a
cross-entropy averaged over every token of the micro-batch's chosen sequences, *prompt tokens
included* (its comment: "orpo chosen nll loss is computed over the full prompt and response");
here it is the paper's NLL of the chosen response y_w given x (response tokens only), the token
mean per pair, averaged over the pairs of the optimizer step like L_OR, so that the loss is a
mean over pairs that does not depend on micro-batching. The two agree when every chosen
response has the same length and no prompt token is counted (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_align.data.batch import PairBatch
from lit_align.data.formats import FORMATS
from lit_align.objectives.base import Objective, ObjectiveOutput
from lit_align.objectives.reduce import masked_mean, normalize


def log1mexp(x: Tensor) -> Tensor:
    """log(1 − eˣ) for x ≤ 0, branching at −ln 2 to avoid cancellation (Mächler 2012)."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_losses(
    chosen_avg: Tensor, rejected_avg: Tensor, chosen_nll: Tensor, lam: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pair ORPO losses, the odds-ratio term and the log odds ratio.

    Args:
        chosen_avg, rejected_avg: ``(pairs,)`` (1/|y|)·log π(y|x), i.e. log P(y|x).
        chosen_nll: ``(pairs,)`` L_SFT of each pair's chosen response.
        lam: λ, the weight of the odds-ratio term.

    Returns:
        ``(losses, or_losses, log_odds_ratio)``, each ``(pairs,)``: L_SFT + λ·L_OR, L_OR, and
        log odds(y_w|x) − log odds(y_l|x) (detached).
    """
    log_odds = (chosen_avg - rejected_avg) - (log1mexp(chosen_avg) - log1mexp(rejected_avg))
    or_losses = -F.logsigmoid(log_odds)
    return chosen_nll + lam * or_losses, or_losses, log_odds.detach()


class ORPO(Objective):
    """ORPO over a batch of pairs, averaged over the pairs of the optimizer step; no reference.

    Args:
        lam: λ, the weight of the odds-ratio term (TRL's ``beta``; the paper uses 0.1–1).
    """

    row_format = FORMATS["pairs"]

    def __init__(self, lam: float = 0.1) -> None:
        super().__init__()
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        self.lam = lam

    def normalizer(self, batch: PairBatch) -> Tensor:
        return torch.tensor(len(batch.chosen), device=batch.chosen.device)

    def forward(self, batch: PairBatch, logps: Tensor, ref_logps: Tensor | None, normalizer: Tensor) -> ObjectiveOutput:
        avg = masked_mean(logps, batch.loss_mask, dim=1)  # (responses,) log P(y|x)
        chosen, rejected = avg[batch.chosen], avg[batch.rejected]
        losses, or_losses, log_odds = orpo_losses(chosen, rejected, -chosen, self.lam)
        metrics = {
            "logps/chosen_nll": -chosen.detach().mean(),
            "train/or_loss": or_losses.detach().mean(),
            "rewards/log_odds_ratio": log_odds.mean(),
            "rewards/accuracies": (log_odds > 0).float().mean(),
            "logps/chosen": chosen.detach().mean(),
            "logps/rejected": rejected.detach().mean(),
        }
        return ObjectiveOutput(normalize(losses.sum(), normalizer), metrics)

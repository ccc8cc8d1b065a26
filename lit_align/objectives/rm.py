"""Reward modelling: the Bradley–Terry loss on preference pairs, as in Ouyang et al. 2022
(arXiv 2203.02155), eq. 1:

    L = −log σ(r(x, y_c) − r(x, y_r))        averaged over the pairs of the step

where r is the scalar head of a sequence classifier (``AutoModelForSequenceClassification``
with one label) read at the last token. ``center_coef`` adds the centring term of Eisenstein
et al. 2023 (arXiv 2312.09244), c·(r_c + r_r)², which the pairwise loss cannot see: it keeps
the scores near zero, so a reward's scale means the same across runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_align.data.batch import PairBatch
from lit_align.data.formats import FORMATS
from lit_align.objectives.base import Objective, ObjectiveOutput
from lit_align.objectives.reduce import normalize


def bradley_terry_loss(chosen: Tensor, rejected: Tensor) -> Tensor:
    """``(P,)`` per-pair −log σ(r_c − r_r) from ``(P,)`` chosen and rejected scores."""
    return -F.logsigmoid(chosen - rejected)


class RM(Objective):
    """Bradley–Terry training of a sequence classifier on pairs.

    A micro-batch is a `PairBatch`; the module passes the classifier's score of each response
    ``(responses,)`` instead of per-token log-probs (``inputs = "scores"``). Logs
    ``rm/accuracy`` (the chosen scored higher), ``rm/margin`` and the mean scores.

    Args:
        center_coef: weight of the (r_c + r_r)² centring term; 0 disables it.
    """

    row_format = FORMATS["pairs"]
    inputs = "scores"

    def __init__(self, center_coef: float = 0.0) -> None:
        super().__init__()
        if center_coef < 0:
            raise ValueError(f"center_coef must be >= 0, got {center_coef}")
        self.center_coef = center_coef

    def normalizer(self, batch: PairBatch) -> Tensor:
        return torch.tensor(len(batch.chosen), device=batch.chosen.device)

    def forward(
        self,
        batch: PairBatch,
        scores: Tensor,
        ref_logps: Tensor | None,
        normalizer: Tensor,
    ) -> ObjectiveOutput:
        chosen, rejected = scores[batch.chosen], scores[batch.rejected]
        losses = bradley_terry_loss(chosen, rejected)
        if self.center_coef:
            losses = losses + self.center_coef * (chosen + rejected).square()
        margin = (chosen - rejected).detach()
        metrics = {
            "rm/accuracy": (margin > 0).float().mean(),
            "rm/margin": margin.mean(),
            "rm/chosen": chosen.detach().mean(),
            "rm/rejected": rejected.detach().mean(),
        }
        return ObjectiveOutput(normalize(losses.sum(), normalizer), metrics)

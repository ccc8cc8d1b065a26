"""An NLL term on the chosen responses, added to a preference loss to anchor their likelihood.

Shared by DPO (RPO: Pang et al. 2024, arXiv 2404.19733, Eq. 3) and SimPO (CPO-SimPO: the
behaviour-cloning term of CPO, Xu et al. 2024, arXiv 2401.08417, Eq. 6, which TRL's
``CPOTrainer`` adds to ``loss_type="simpo"`` with weight ``cpo_alpha``, default 1). Without it,
a pair whose rejected response is a near copy of the chosen one lowers the shared tokens'
likelihood on both sides (likelihood displacement, Razin et al. 2024, arXiv 2410.08847).

Two normalisations, each counted over the whole optimizer step so micro-batching cannot change
them (`lit_align.objectives.reduce`):

- ``pair``: each chosen response's token mean, averaged over the step's pairs (RPO's form);
- ``token``: the mean over every chosen token of the step (TRL's ``sft`` DPO term and CPO's
  cross-entropy, which TRL takes per micro-batch).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_align.data.batch import PairBatch
from lit_align.objectives.reduce import masked_mean, masked_sum, normalize, rows_of

NORMALIZATIONS = ("pair", "token")


def check_normalization(how: str) -> None:
    if how not in NORMALIZATIONS:
        raise ValueError(f"sft_normalize must be pair or token, got {how!r}")


def step_normalizer(batch: PairBatch, weight: float, how: str) -> Tensor:
    """The step's normalizer of a pair loss with this term at ``weight``: the pairs, and with a
    ``token`` term the chosen tokens too, as a vector ``(pairs, tokens)`` whose first entry is the
    pairs. Without the term (``weight`` 0) the pairs alone."""
    pairs = torch.tensor(len(batch.chosen), device=batch.chosen.device)
    if weight and how == "token":
        return torch.stack([pairs, batch.loss_mask[batch.chosen].sum()])
    return pairs


def chosen_nll(batch: PairBatch, logps: Tensor, normalizer: Tensor, how: str) -> tuple[Tensor, Tensor]:
    """``(term, metric)``: this micro-batch's share of the step's chosen NLL (scalar, to be
    weighted and added to the loss) and, detached, its mean NLL per token (``token``) or per
    pair (``pair``) for ``logps/chosen_nll``.

    Args:
        batch: the pairs; ``logps`` ``(responses, T)`` their per-token log-probs.
        normalizer: the step's `step_normalizer` for ``how``.
    """
    chosen_logps, chosen_mask = logps[batch.chosen], batch.loss_mask[batch.chosen]
    if how == "token":
        nll_sum = -masked_sum(chosen_logps, chosen_mask, dim=1).sum()
        return normalize(nll_sum, normalizer.reshape(-1)[1]), nll_sum.detach() / chosen_mask.sum().clamp(min=1)
    nll = -masked_mean(chosen_logps, chosen_mask, dim=1)
    return normalize(nll.sum(), rows_of(normalizer)), nll.detach().mean()

"""Supervised fine-tuning: next-token negative log-likelihood on response tokens."""

from __future__ import annotations

from torch import Tensor

from lit_align.data.batch import SFTBatch
from lit_align.objectives.base import Objective, ObjectiveOutput
from lit_align.objectives.reduce import masked_sum, normalize


def sft_loss(logps: Tensor, mask: Tensor, normalizer: Tensor | float) -> Tensor:
    """Token-mean NLL over the optimizer step.

    L = -(1/N) Σ_{b,t} m[b,t] · logps[b,t], where N is the number of response tokens in the
    whole step (all micro-batches and ranks), so the step's gradient is the same however the
    step is split.

    Args:
        logps: ``(batch, seq)`` log-probs of the target tokens.
        mask: ``(batch, seq)`` 1 on response tokens, 0 on prompt and padding.
        normalizer: N, the step's response-token count (a share of it per rank under DDP).

    Returns:
        The scalar loss of this micro-batch's tokens.
    """
    return normalize(-masked_sum(logps, mask), normalizer)


class SFT(Objective):
    """Next-token NLL on response tokens; prompt tokens are masked out (``loss_mask`` is 0)."""

    def normalizer(self, batch: SFTBatch) -> Tensor:
        return batch.loss_mask.sum()

    def forward(
        self,
        batch: SFTBatch,
        logps: Tensor,
        ref_logps: Tensor | None,
        normalizer: Tensor,
    ) -> ObjectiveOutput:
        return ObjectiveOutput(sft_loss(logps, batch.loss_mask, normalizer), {})

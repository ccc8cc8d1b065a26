"""KTO: Kahneman–Tversky optimisation from unpaired desirable / undesirable responses.

Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization"
(arXiv 2402.01306), Eq. 8: with the implied reward r = log π(y|x) − log π_ref(y|x) and the
reference point z₀ = max(0, KL(π ‖ π_ref)), estimated from mismatched prompt/response pairs
(x, y') and detached,

    L = E[ λ_y − v(x, y) ],  v = λ_D·σ(β(r − z₀)) if y is desirable, λ_U·σ(β(z₀ − r)) if not,

i.e. λ_D·(1 − σ(β(r − z₀))) per desirable response and λ_U·(1 − σ(β(z₀ − r))) per undesirable
one, as TRL writes it (``trl/trainer/kto_trainer.py``, ``_compute_loss``, ``loss_type="kto"``),
averaged over the responses.

z₀ here is one number per optimizer step: the module scores the step's mismatched pairs (every
micro-batch, no gradient) before the gradient pass, and sums log π − log π_ref and the number of
pairs over ranks (`lit_align.step.step_inputs`), so ``kl_estimate`` is their mean over the step on
all devices; the pairs themselves are fixed over the training split (`lit_align.data.formats.
UnpairedFormat`), so the update does not depend on micro-batching or device count. TRL estimates it
per micro-batch (the mean over ranks of each rank's micro-batch mean); with one micro-batch per
step and equal batches per rank the two are the same number.

**The NLL anchor** (``sft_weight``; not in the KTO paper, nor in TRL's KTOTrainer): each
desirable response's token-mean NLL, averaged over the step's desirable responses, added with
weight ``sft_weight``: the term DPO (RPO) and SimPO (CPO) carry after SFT here
(`lit_align.objectives.anchor`). From an SFT start on reasoning chains, plain KTO lowers the
desirable chains' likelihood with the undesirable near copies' and collapses (README, "Offline
objectives from one SFT start"); the KTO pipeline after SFT sets it to 1, 0 is the paper's KTO.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_align.data.batch import UnpairedBatch
from lit_align.data.formats import FORMATS
from lit_align.objectives.base import Objective, ObjectiveOutput
from lit_align.objectives.reduce import masked_mean, masked_sum, normalize, rows_of


def kto_losses(
    policy_logps: Tensor,
    ref_logps: Tensor,
    desirable: Tensor,
    z0: Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Per-response KTO losses and the implied rewards.

    Args:
        policy_logps, ref_logps: ``(responses,)`` log π(y|x) and log π_ref(y|x).
        desirable: ``(responses,)`` bool.
        z0: ``()`` the reference point (treated as a constant: detached here).
        beta: β (> 0).
        desirable_weight, undesirable_weight: λ_D and λ_U.

    Returns:
        ``(losses, rewards)``, each ``(responses,)``; the rewards are β·r, detached.
    """
    ratio = policy_logps - ref_logps
    z0 = z0.detach()
    desirable_losses = desirable_weight * (1 - torch.sigmoid(beta * (ratio - z0)))
    undesirable_losses = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - ratio)))
    return torch.where(desirable, desirable_losses, undesirable_losses), beta * ratio.detach()


def kto_reference_point(kl_estimate: Tensor) -> Tensor:
    """z₀ = max(0, the mean over mismatched pairs of log π(y'|x) − log π_ref(y'|x)), detached."""
    return kl_estimate.detach().clamp(min=0)


class KTO(Objective):
    """KTO over unpaired responses (`UnpairedBatch`), averaged over the responses of the
    optimizer step; the reference is a frozen copy of the starting policy (or a LoRA policy with
    its adapters off).

    Args:
        beta: β.
        desirable_weight: λ_D. The paper advises λ_D·n_D / (λ_U·n_U) in [1, 4/3].
        undesirable_weight: λ_U.
        sft_weight: weight of the NLL anchor on the desirable responses (0: none, the paper's KTO).
    """

    row_format = FORMATS["unpaired"]
    needs_reference = True
    needs_kl_pairs = True

    def __init__(
        self, beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0, sft_weight: float = 0.0
    ) -> None:
        super().__init__()
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        if min(desirable_weight, undesirable_weight, sft_weight) < 0:
            raise ValueError(f"the weights must be >= 0, got {desirable_weight=}, {undesirable_weight=}, {sft_weight=}")
        self.beta, self.desirable_weight, self.undesirable_weight = beta, desirable_weight, undesirable_weight
        self.sft_weight = sft_weight

    def normalizer(self, batch: UnpairedBatch) -> Tensor:
        """The step's responses; with the NLL anchor, ``(responses, desirable responses)``."""
        responses = torch.tensor(batch.num_responses, device=batch.desirable.device)
        if self.sft_weight:
            return torch.stack([responses, batch.desirable.sum()])
        return responses

    def forward(
        self,
        batch: UnpairedBatch,
        logps: Tensor,
        ref_logps: Tensor | None,
        normalizer: Tensor,
        kl_estimate: Tensor | None = None,
    ) -> ObjectiveOutput:
        assert ref_logps is not None, "KTO needs the reference's log-probs"
        assert kl_estimate is not None, "KTO needs the step's KL estimate (lit_align.step.step_inputs)"
        mask = batch.loss_mask
        seq, ref_seq = masked_sum(logps, mask, dim=1), masked_sum(ref_logps, mask, dim=1)
        z0 = kto_reference_point(kl_estimate)
        losses, rewards = kto_losses(
            seq, ref_seq, batch.desirable, z0, self.beta, self.desirable_weight, self.undesirable_weight
        )
        good, bad = batch.desirable.float(), (~batch.desirable).float()
        # Means over this micro-batch's desirable / undesirable responses (0 where it has none).
        metrics = {
            "rewards/chosen": masked_mean(rewards, good),
            "rewards/rejected": masked_mean(rewards, bad),
            "logps/chosen": masked_mean(seq.detach(), good),
            "logps/rejected": masked_mean(seq.detach(), bad),
            "kto/kl": z0,
        }
        loss = normalize(losses.sum(), rows_of(normalizer))
        if self.sft_weight:  # each desirable response's token mean, over the step's desirable ones
            nll = -masked_mean(logps, mask, dim=1)
            loss = loss + self.sft_weight * normalize(nll[batch.desirable].sum(), normalizer.reshape(-1)[1])
            metrics["kto/desirable_nll"] = masked_mean(nll.detach(), good)
        return ObjectiveOutput(loss, metrics)

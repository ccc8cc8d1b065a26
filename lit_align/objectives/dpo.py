"""Direct Preference Optimization and its common variants, as pure functions of sequence log-probs.

With h = (log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x)), the implicit
reward margin of the chosen response y_w over the rejected y_l:

- ``sigmoid``: DPO, Rafailov et al. 2023 (arXiv 2305.18290), Eq. 7: −log σ(βh). With label
  smoothing ε (conservative DPO, Mitchell 2023): −(1−ε)·log σ(βh) − ε·log σ(−βh).
- ``ipo``: IPO, Azar et al. 2023 (arXiv 2310.12036), Eq. 17: (h − 1/(2β))², by default on
  per-token log-ratios (each response's summed log-ratio divided by its length): the form the
  IPO authors' results use, as TRL 1.16 notes and computes (dpo_trainer.py, ``loss_type="ipo"``);
  on summed log-ratios h grows with the length, and a β from the paper means something else.
- ``hinge``: the calibration loss of SLiC-HF, Zhao et al. 2023 (arXiv 2305.10425), Eq. 1,
  on the implicit reward margin: max(0, 1 − βh).

Sequence log-probs are sums over response tokens (the paper's log π(y|x)); IPO's per-token form
is the `DPO` objective's ``ipo_normalize`` (callers of `dpo_losses` pass token means).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_align.data.batch import PairBatch
from lit_align.data.formats import FORMATS
from lit_align.objectives.anchor import check_normalization, chosen_nll, step_normalizer
from lit_align.objectives.base import Objective, ObjectiveOutput
from lit_align.objectives.reduce import masked_sum, normalize, rows_of

LOSS_TYPES = ("sigmoid", "ipo", "hinge")


def dpo_losses(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pair preference losses and the implicit rewards.

    Args:
        policy_chosen, policy_rejected: ``(pairs,)`` log π(y|x) of the chosen / rejected response.
        ref_chosen, ref_rejected: ``(pairs,)`` the same under the reference (no gradient needed).
        beta: the KL strength β (> 0).
        loss_type: ``sigmoid``, ``ipo`` or ``hinge``.
        label_smoothing: ε, the assumed rate of flipped labels (``sigmoid`` only).

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``, each ``(pairs,)``; the rewards are
        β·(log π − log π_ref), detached.
    """
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    h = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    else:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


class DPO(Objective):
    """DPO-family loss over a batch of pairs, averaged over the pairs of the optimizer step.

    A micro-batch is a `PairBatch`: each prompt with its chosen and rejected response, scored by
    one forward of the policy (and one of the reference) that computes the prompt once.

    Args:
        beta: β.
        loss_type: ``sigmoid`` (DPO), ``ipo`` or ``hinge``.
        label_smoothing: ε for conservative DPO, in [0, 0.5).
        sft_weight: weight of an NLL term on the chosen response, added to the preference
            loss; 0 disables it.
        sft_normalize: how that NLL is averaged. ``pair`` (default): each chosen response's
            token mean, averaged over the step's pairs — the RPO paper's form (Pang et al. 2024,
            arXiv 2404.19733, Eq. 3: NLL/|y_w| per pair). ``token``: the mean over every chosen
            token of the optimizer step, as TRL's ``loss_type=[..., "sft"]`` (``dpo_trainer.py``:
            ``-chosen_per_token_logps[chosen_mask].mean()``), but counted over the whole step and
            all ranks, where TRL's is per micro-batch: long responses weigh more.
        ipo_normalize: with ``loss_type=ipo``, per-token log-ratios (the IPO authors' and TRL's
            form, default); false uses the summed ones.
        precompute_ref: the reference log-probs come with the batch (``ref_logps``, computed
            once before training), so no reference model is kept during training.
    """

    row_format = FORMATS["pairs"]

    def __init__(
        self,
        beta: float = 0.1,
        loss_type: str = "sigmoid",
        label_smoothing: float = 0.0,
        sft_weight: float = 0.0,
        precompute_ref: bool = False,
        ipo_normalize: bool = True,
        sft_normalize: str = "pair",
    ) -> None:
        super().__init__()
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
        if not 0 <= label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
        if label_smoothing and loss_type != "sigmoid":
            raise ValueError("label_smoothing applies to loss_type=sigmoid only")
        self.beta, self.loss_type, self.label_smoothing = beta, loss_type, label_smoothing
        check_normalization(sft_normalize)
        self.sft_weight, self.sft_normalize = sft_weight, sft_normalize
        self.ipo_normalize = ipo_normalize
        self.precompute_ref = precompute_ref
        self.needs_reference = not precompute_ref

    def normalizer(self, batch: PairBatch) -> Tensor:
        return step_normalizer(batch, self.sft_weight, self.sft_normalize)

    def forward(
        self,
        batch: PairBatch,
        logps: Tensor,
        ref_logps: Tensor | None,
        normalizer: Tensor,
    ) -> ObjectiveOutput:
        mask = batch.loss_mask
        seq = masked_sum(logps, mask, dim=1)  # (responses,) log π(y|x)
        if ref_logps is None:
            assert batch.ref_logps is not None, "DPO needs the reference's log-probs (a model or precomputed)"
            ref_chosen, ref_rejected = batch.ref_logps.unbind(-1)
        else:
            ref_seq = masked_sum(ref_logps, mask, dim=1)
            ref_chosen, ref_rejected = ref_seq[batch.chosen], ref_seq[batch.rejected]
        chosen, rejected = seq[batch.chosen], seq[batch.rejected]
        if self.loss_type == "ipo" and self.ipo_normalize:  # per-token log-ratios (see the module docstring)
            lengths = mask.sum(1).clamp(min=1).to(seq.dtype)
            chosen_len, rejected_len = lengths[batch.chosen], lengths[batch.rejected]
            chosen, rejected = chosen / chosen_len, rejected / rejected_len
            ref_chosen, ref_rejected = ref_chosen / chosen_len, ref_rejected / rejected_len
        losses, chosen_rewards, rejected_rewards = dpo_losses(
            chosen, rejected, ref_chosen, ref_rejected, self.beta, self.loss_type, self.label_smoothing
        )
        pairs = rows_of(normalizer)
        loss = normalize(losses.sum(), pairs)
        metrics = {
            "rewards/chosen": chosen_rewards.mean(),
            "rewards/rejected": rejected_rewards.mean(),
            "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
            "logps/chosen": seq[batch.chosen].detach().mean(),  # summed, whatever the loss reads
            "logps/rejected": seq[batch.rejected].detach().mean(),
        }
        if self.sft_weight:  # RPO's NLL anchor (`lit_align.objectives.anchor`)
            nll, metrics["logps/chosen_nll"] = chosen_nll(batch, logps, normalizer, self.sft_normalize)
            loss = loss + self.sft_weight * nll
        return ObjectiveOutput(loss, metrics)

"""The reference model: a frozen copy of the starting policy, or a LoRA policy with its adapters
off, and the log-probs objectives compare the policy's against."""

from __future__ import annotations

import copy

import torch
from torch import Tensor
from transformers import PreTrainedModel

from lit_align.data.batch import Responses
from lit_align.models.forward import eval_mode
from lit_align.models.lora import is_lora
from lit_align.models.response_forward import response_logps
from lit_align.objectives.reduce import masked_sum


def frozen_copy(model: PreTrainedModel) -> PreTrainedModel:
    """An eval-mode copy of ``model`` whose parameters need no gradient."""
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference


@torch.no_grad()
def reference_logps(
    policy: PreTrainedModel, reference: PreTrainedModel | None, inputs: dict[str, Tensor], shared: bool, who: str
) -> Tensor:
    """``(R, T)`` log-probs of the response tokens under the reference: the frozen copy, or
    a LoRA policy with its adapters off (the starting weights exactly: LoRA trains only the
    adapters). ``inputs``: `Responses.forward_inputs`; ``who`` names the objective that asked,
    in the error when there is neither."""
    if reference is not None:
        return response_logps(reference, **inputs, shared=shared).logps
    if not is_lora(policy):
        raise RuntimeError(f"{who} has no reference model")
    with policy.disable_adapter(), eval_mode(policy):
        return response_logps(policy, **inputs, shared=shared).logps


@torch.no_grad()
def sequence_logps(model: PreTrainedModel, batch: Responses, shared: bool = True) -> Tensor:
    """``(responses,)`` summed log-probs of each response's scored tokens, computed in eval mode
    on the model's device and returned on the CPU."""
    device = next(model.parameters()).device
    batch = batch.to(device)
    with eval_mode(model):
        logps = response_logps(model, **batch.forward_inputs(), shared=shared).logps
    return masked_sum(logps, batch.loss_mask, dim=1).cpu()

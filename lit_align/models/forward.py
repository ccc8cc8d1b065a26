"""The training forward: per-token log-probs of each next token, for any padding side."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor
from transformers import PreTrainedModel

from lit_align.objectives.logps import shifted_logps


def forward_logps(model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """``(batch, seq)`` ids → ``(batch, seq - 1)`` log-probs of each next token.

    Positions count real tokens only (``cumsum(mask) - 1``), as generation does for left-padded
    prompts. Models with absolute position embeddings (GPT-2, OPT) would otherwise score a
    left-padded rollout at shifted positions; rotary models (Llama, Qwen) are shift-invariant
    and unaffected. For right-padded batches it equals the default ``arange``.
    """
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    ).logits
    return shifted_logps(logits, input_ids)


@contextmanager
def eval_mode(model: PreTrainedModel) -> Iterator[PreTrainedModel]:
    """``model`` in eval mode (no dropout) for the block, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)

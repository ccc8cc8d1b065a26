"""The training forward: per-token log-probs of each next token, for any padding side."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import Tensor
from transformers import PreTrainedModel

from lit_align.objectives.logps import shifted_logps, token_entropy


class PolicyOutput(NamedTuple):
    """One forward of a causal LM over ``(batch, seq)`` ids.

    Attributes:
        logps: ``(batch, seq - 1)`` log-prob of each next token.
        entropy: ``(batch, seq - 1)`` entropy of each next-token distribution, or ``None``.
        hidden: ``(batch, seq, hidden)`` the last layer's hidden states, or ``None``.
    """

    logps: Tensor
    entropy: Tensor | None
    hidden: Tensor | None


def position_ids(attention_mask: Tensor) -> Tensor:
    """Positions that count real tokens only (``cumsum(mask) - 1``), as generation does for
    left-padded prompts. Models with absolute position embeddings (GPT-2, OPT) would otherwise
    score a left-padded rollout at shifted positions; rotary models (Llama, Qwen) are
    shift-invariant and unaffected. For right-padded batches it equals the default ``arange``."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def policy_forward(
    model: PreTrainedModel,
    input_ids: Tensor,
    attention_mask: Tensor,
    entropy: bool = False,
    hidden: bool = False,
    entropy_grad: bool = True,
) -> PolicyOutput:
    """Log-probs of each next token, and on request their entropies (detached unless
    ``entropy_grad``) and the last hidden states (for a value head that shares the policy's
    trunk), all from one forward."""
    out = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
        use_cache=False, output_hidden_states=hidden,
    )  # fmt: skip
    entropies = None
    if entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            entropies = token_entropy(out.logits[:, :-1])
    return PolicyOutput(
        logps=shifted_logps(out.logits, input_ids),
        entropy=entropies,
        hidden=out.hidden_states[-1] if hidden else None,
    )


def forward_logps(model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """``(batch, seq)`` ids → ``(batch, seq - 1)`` log-probs of each next token."""
    return policy_forward(model, input_ids, attention_mask).logps


@contextmanager
def eval_mode(model: PreTrainedModel) -> Iterator[PreTrainedModel]:
    """``model`` in eval mode (no dropout) for the block, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)

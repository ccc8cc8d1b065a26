"""Batched generation from the current policy weights, in-process."""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@torch.no_grad()
def generate_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
) -> tuple[Tensor, list[str]]:
    """Complete left-padded prompts with the model's KV cache; greedy unless ``do_sample``.

    Args:
        prompt_ids: ``(batch, prompt_len)`` left-padded prompt ids.
        prompt_mask: ``(batch, prompt_len)`` 1 on prompt tokens.

    Returns:
        ``(completion_ids, texts)``: ``(batch, new_len)`` generated ids, padded with the pad id
        after each sequence's eos, and their decoded text without special tokens.
    """
    sampling = {"temperature": temperature, "top_p": top_p, "top_k": top_k} if do_sample else {}
    sequences = model.generate(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        use_cache=True,
        **sampling,
    )
    completion_ids = sequences[:, prompt_ids.shape[1] :]
    return completion_ids, tokenizer.batch_decode(completion_ids, skip_special_tokens=True)

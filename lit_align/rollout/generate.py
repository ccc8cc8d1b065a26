"""Batched generation from the current policy weights, in-process."""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_align.models.sharding import synced_generation

# Plain decoding, whatever a checkpoint's generation_config.json says. `generate` takes every
# setting a call leaves out from that file, and Hub chat models ship sampling defaults there
# (Qwen2.5-Instruct: do_sample, temperature 0.7, top_p 0.8, top_k 20, repetition_penalty
# 1.05-1.1). A penalty would make greedy evaluation something else, and online samples would come
# from a distribution other than the policy's, whose log-probs the objectives use. Temperature,
# top-p and top-k are lit_align's own settings, passed by each call.
PLAIN_DECODING = {
    "num_beams": 1, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "min_length": 0, "min_new_tokens": None,
    "min_p": None, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0,
}  # fmt: skip


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
        synced_gpus=synced_generation(model),
        **PLAIN_DECODING,
        **sampling,
    )
    completion_ids = sequences[:, prompt_ids.shape[1] :]
    return completion_ids, tokenizer.batch_decode(completion_ids, skip_special_tokens=True)

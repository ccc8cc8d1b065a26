"""Tokenising prompt/response rows and padding them into batches.

Training batches are right-padded (positions count from each sequence's first token); prompt
batches for generation are left-padded so every prompt ends where generation begins.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase


def encode_prompt_response(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    response: str,
    max_prompt_length: int,
    max_length: int,
) -> dict[str, Any]:
    """``{"input_ids", "prompt_len", "prompt_truncated", "response_truncated"}`` for one row.

    The prompt gets the tokenizer's bos token (if it has one) and the response its eos token.
    Truncation policy: a prompt over ``max_prompt_length`` keeps its *last* tokens (the question
    and the cue to answer sit at the end; the bos token is kept); a response that does not fit
    in ``max_length`` is cut at the end, losing its eos token. Both are flagged so they can be
    counted.
    """
    prompt_ids, prompt_truncated = encode_prompt(tokenizer, prompt, max_prompt_length)
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    room = max_length - len(prompt_ids)
    return {
        "input_ids": prompt_ids + response_ids[:room],
        "prompt_len": len(prompt_ids),
        "prompt_truncated": prompt_truncated,
        "response_truncated": len(response_ids) > room,
    }


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, max_prompt_length: int) -> tuple[list[int], bool]:
    """Prompt ids with bos, keeping the last ``max_prompt_length`` tokens (bos stays first),
    and whether any were cut."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    keep = max_prompt_length - len(bos)
    return bos + ids[-keep:], len(ids) > keep


def pad(sequences: Sequence[Sequence[int]], pad_id: int, left: bool = False) -> tuple[Tensor, Tensor]:
    """``(ids, attention_mask)``, both ``(batch, longest)``; padding on the left if ``left``."""
    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for i, seq in enumerate(sequences):
        span = slice(longest - len(seq), longest) if left else slice(0, len(seq))
        ids[i, span] = torch.tensor(seq, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def collate_sft(rows: Sequence[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``loss_mask`` (1 on response tokens),
    each ``(batch, longest)``, plus ``num_tokens``, the count of non-pad tokens."""
    input_ids, attention_mask = pad([r["input_ids"] for r in rows], pad_id)
    positions = torch.arange(input_ids.shape[1])
    prompt_len = torch.tensor([r["prompt_len"] for r in rows])
    loss_mask = (positions[None, :] >= prompt_len[:, None]).long() * attention_mask
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "loss_mask": loss_mask,
        "num_tokens": int(attention_mask.sum()),
    }


def collate_prompts(rows: Sequence[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Left-padded ``prompt_ids`` and ``prompt_mask`` ``(batch, longest)`` for generation,
    with the rows' ``answer`` strings alongside."""
    prompt_ids, prompt_mask = pad([r["prompt_ids"] for r in rows], pad_id, left=True)
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "answer": [r["answer"] for r in rows]}


class StepCollator:
    """Collates one optimizer step's rows into a list of micro-batches of ``micro_batch_size``.

    Each micro-batch is padded on its own, so short rows are not padded to the step's longest.
    """

    def __init__(self, collate: Callable[[Sequence[dict[str, Any]]], dict[str, Any]], micro_batch_size: int):
        self.collate = collate
        self.micro_batch_size = micro_batch_size

    def __call__(self, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        size = self.micro_batch_size
        return [self.collate(rows[i : i + size]) for i in range(0, len(rows), size)]

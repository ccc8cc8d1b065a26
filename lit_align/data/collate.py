"""Tokenising prompt/response rows, and padding.

Prompts are left-padded so every prompt ends where its responses (or generation) begin;
responses are right-padded. Training rows become typed batches in `lit_align.data.formats`.
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
    eos: bool = True,
) -> dict[str, Any]:
    """``{"input_ids", "prompt_len", "prompt_truncated", "response_truncated"}`` for one row.

    The prompt gets the tokenizer's bos token (if it has one) and the response its eos token
    (none with ``eos=False``: a response that is one step of a longer answer).
    Truncation policy: a prompt over ``max_prompt_length`` keeps its *last* tokens (the question
    and the cue to answer sit at the end; the bos token is kept); a response that does not fit
    in ``max_length`` is cut at the end, losing its eos token. Both are flagged so they can be
    counted.
    """
    prompt_ids, prompt_truncated = encode_prompt(tokenizer, prompt, max_prompt_length)
    response_ids = encode_response(tokenizer, response, eos)
    room = max_length - len(prompt_ids)
    return {
        "input_ids": prompt_ids + response_ids[:room],
        "prompt_len": len(prompt_ids),
        "prompt_truncated": prompt_truncated,
        "response_truncated": len(response_ids) > room,
    }


def encode_response(tokenizer: PreTrainedTokenizerBase, response: str, eos: bool = True) -> list[int]:
    """A response's ids with the eos token that ends it (``eos=False``: without)."""
    return tokenizer(response, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if eos else [])


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


def encode_pair(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    chosen: str,
    rejected: str,
    max_prompt_length: int,
    max_length: int,
    eos: bool = True,
) -> dict[str, Any]:
    """A preference row as two encoded sequences sharing one prompt encoding."""
    c = encode_prompt_response(tokenizer, prompt, chosen, max_prompt_length, max_length, eos)
    r = encode_prompt_response(tokenizer, prompt, rejected, max_prompt_length, max_length, eos)
    return {
        "chosen_ids": c["input_ids"], "rejected_ids": r["input_ids"], "prompt_len": c["prompt_len"],
        "prompt_truncated": c["prompt_truncated"],
        "response_truncated": c["response_truncated"] or r["response_truncated"],
    }  # fmt: skip


def encode_group(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    responses: Sequence[dict[str, Any]],
    max_prompt_length: int,
    max_length: int,
) -> dict[str, Any]:
    """One question's chains: ``responses`` are ``{"text", "correct", "rank", "reference"}``."""
    encoded = [encode_prompt_response(tokenizer, prompt, r["text"], max_prompt_length, max_length) for r in responses]
    return {
        "sequences": [e["input_ids"] for e in encoded],
        "prompt_len": encoded[0]["prompt_len"] if encoded else 0,
        "correct": [bool(r["correct"]) for r in responses],
        "rank": [int(r["rank"]) for r in responses],
        "reference": [bool(r.get("reference", False)) for r in responses],
        "prompt_truncated": any(e["prompt_truncated"] for e in encoded),
        "response_truncated": any(e["response_truncated"] for e in encoded),
    }


def collate_prompts(rows: Sequence[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Left-padded ``prompt_ids`` and ``prompt_mask`` ``(batch, longest)`` for generation,
    with the rows' ``answer`` strings alongside."""
    prompt_ids, prompt_mask = pad([r["prompt_ids"] for r in rows], pad_id, left=True)
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "answer": [r["answer"] for r in rows]}


class StepCollator:
    """Collates one optimizer step's rows (prompts with their responses) into a list of
    micro-batches of ``micro_batch_size`` rows.

    Each micro-batch is padded on its own, so short rows are not padded to the step's longest.
    """

    def __init__(
        self,
        collate: Callable[[Sequence[dict[str, Any]]], dict[str, Any]],
        micro_batch_size: int,
    ):
        self.collate = collate
        self.micro_batch_size = micro_batch_size

    def __call__(self, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        size = self.micro_batch_size
        return [self.collate(rows[i : i + size]) for i in range(0, len(rows), size)]

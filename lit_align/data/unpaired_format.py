"""KTO's unpaired rows: a prompt with one response labelled desirable or not, and the same prompt
with a mismatched response for KTO's reference point."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from lit_align.data.batch import UnpairedBatch
from lit_align.data.collate import encode_prompt_response, pad
from lit_align.data.row_format import Row, RowFormat, Scored, join_response, responses_tensors, split_prompt


class UnpairedFormat(RowFormat):
    """``prompt``, ``completion``, ``label`` (bool) → one prompt with one response, and the same
    prompt with a mismatched response for KTO's KL reference point.

    The mismatched responses are assigned over the whole split (`split_columns`), once, before
    it is shuffled into steps: a row's is then the same whichever step, micro-batch or rank serves
    it, so z₀ does not depend on micro-batching or on the device count. Assigning them within
    each step's rows would not do: a rank holds only its share of the step, and the share depends
    on the number of ranks. TRL's KTO trainer also pairs over the dataset before shuffling
    (``trl/trainer/kto_trainer.py``, ``add_kl_completion_ids`` mapped in chunks of the per-device
    batch size, ``[c[-1]] + c[:-1]``); see `mismatched_responses` for which row lends its own.
    """

    name = "unpaired"

    def encode(self, tokenizer: PreTrainedTokenizerBase, row: Row, max_prompt_length: int, max_length: int) -> Row:
        eos = not row.get("partial", False)  # one step of a longer answer, as in `PairFormat`
        prompt, completion = row["prompt"], row["completion"]
        encoded = encode_prompt_response(tokenizer, prompt, completion, max_prompt_length, max_length, eos)
        return {**encoded, "label": bool(row["label"])}

    def from_samples(
        self, prompt: list[int], scored: Sequence[Scored], references: Sequence[Sequence[int]], threshold: float,
        max_length: int | None, prompt_truncated: bool,
    ) -> list[Row]:  # fmt: skip
        """Online KTO: every sample, desirable when its reward reaches ``threshold`` — binary
        feedback on the policy's own outputs, the setting KTO was made for (its wrong samples are
        near misses the policy itself finds likely); references are not used."""
        rows = []
        for response, reward in scored:
            ids, cut = join_response(prompt, response, max_length)
            rows.append({"input_ids": ids, "prompt_len": len(prompt), "label": reward >= threshold,
                         "prompt_truncated": prompt_truncated, "response_truncated": cut})  # fmt: skip
        return rows

    def split_columns(self, split: Any) -> dict[str, list[Any]]:
        return {"kl_response": mismatched_responses(split["input_ids"], split["prompt_len"])}

    def collate(self, rows: Sequence[Row], pad_id: int) -> UnpairedBatch:
        if rows and "kl_response" not in rows[0]:  # rows not from a split: they are their own split
            kl = mismatched_responses([r["input_ids"] for r in rows], [r["prompt_len"] for r in rows])
            rows = [{**row, "kl_response": response} for row, response in zip(rows, kl, strict=True)]
        split = [split_prompt(r["input_ids"], r["prompt_len"]) for r in rows]
        fields = responses_tensors([p for p, _ in split], [s for _, s in split], range(len(rows)), pad_id)
        kl_ids, kl_mask = pad([r["kl_response"] or [pad_id] for r in rows], pad_id)
        for i, r in enumerate(rows):
            if not r["kl_response"]:
                kl_mask[i] = 0
        desirable = torch.tensor([bool(r["label"]) for r in rows], dtype=torch.bool)
        return UnpairedBatch(**fields, desirable=desirable, kl_response_ids=kl_ids, kl_response_mask=kl_mask)


def mismatched_responses(input_ids: Sequence[Sequence[int]], prompt_lens: Sequence[int]) -> list[list[int]]:
    """For each of ``n`` encoded rows, the response of row ``(i + n // 2) mod n``: half the split
    away, so that the two rows a preference pair is unpaired into (adjacent, one prompt) never
    lend each other their response, as a shift by one would (TRL's ``unpair_preference_dataset``
    puts a batch's chosen rows before its rejected ones instead). One row keeps its own."""
    responses = [split_prompt(ids, n)[1] for ids, n in zip(input_ids, prompt_lens, strict=True)]
    return [responses[(i + len(responses) // 2) % len(responses)] for i in range(len(responses))]


def unpair(row: Row) -> list[Row]:
    """A preference pair as two unpaired rows: the chosen response desirable, the rejected one
    not (as TRL's ``unpair_preference_dataset``). Other fields stay with both."""
    rest = {k: v for k, v in row.items() if k not in ("chosen", "rejected")}
    return [{**rest, "completion": row["chosen"], "label": True},
            {**rest, "completion": row["rejected"], "label": False}]  # fmt: skip

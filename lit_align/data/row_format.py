"""What every training row format is: `RowFormat`, and the helpers formats share to build a
typed batch (`lit_align.data.batch`) from encoded rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from lit_align.data.batch import Responses
from lit_align.data.collate import pad

Row = dict[str, Any]
Scored = tuple[Sequence[int], float]  # a sample's ids and its reward


class RowFormat:
    """How one kind of training row is encoded and collated."""

    name: ClassVar[str]

    def encode(self, tokenizer: PreTrainedTokenizerBase, row: Row, max_prompt_length: int, max_length: int) -> Row:
        raise NotImplementedError(f"{self.name} rows are not encoded from text")

    def collate(self, rows: Sequence[Row], pad_id: int) -> Responses:
        raise NotImplementedError

    def from_samples(
        self, prompt: list[int], scored: Sequence[Scored], references: Sequence[Sequence[int]], threshold: float,
        max_length: int | None, prompt_truncated: bool,
    ) -> list[Row]:  # fmt: skip
        """This format's encoded rows from one prompt's samples, as online sampling draws them
        (`lit_align.rollout.buffer`): ``prompt`` its ids, ``scored`` its scorable samples'
        ``(ids up to and including eos, reward)``, ``references`` its gold responses' ids (none,
        or one), ``threshold`` the reward of a correct sample, ``max_length`` a sequence's longest."""
        raise NotImplementedError(f"online sampling makes no {self.name} rows")

    def split_columns(self, split: Any) -> dict[str, list[Any]]:
        """Columns a row takes from the other rows of its split (KTO's mismatched responses),
        added once when the encoded split is built: a step, a micro-batch or a rank sees only
        some rows, so what depends on the others is fixed before any of them is served.
        ``split``: the encoded columns by name (a ``datasets.Dataset`` or a dict of lists)."""
        return {}


def join_response(prompt: list[int], response: Sequence[int], max_length: int | None) -> tuple[list[int], bool]:
    """``prompt + response``, the response cut to fit ``max_length``; and whether it was cut."""
    room = len(response) if max_length is None else max(max_length - len(prompt), 0)
    return prompt + list(response[:room]), len(response) > room


def split_prompt(ids: Sequence[int], prompt_len: int) -> tuple[list[int], list[int]]:
    """``ids`` cut into (prompt, response) at ``prompt_len``; a row without prompt tokens lends
    its first token to the prompt (a first token has nothing before it to be predicted from)."""
    cut = max(prompt_len, 1)
    return list(ids[:cut]), list(ids[cut:])


def responses_tensors(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    prompt_index: Sequence[int],
    pad_id: int,
    loss_masks: Sequence[Sequence[int]] | None = None,
) -> dict[str, Tensor]:
    """The fields of `Responses`: prompts left-padded, responses right-padded (at least one
    column, so a batch of empty responses still has a shape)."""
    prompt_ids, prompt_mask = pad([p or [pad_id] for p in prompts], pad_id, left=True)
    for i, p in enumerate(prompts):
        if not p:
            prompt_mask[i] = 0
    response_ids, response_mask = pad([r or [pad_id] for r in responses], pad_id)
    for i, r in enumerate(responses):
        if not r:
            response_mask[i] = 0
    loss_mask = response_mask.clone()
    if loss_masks is not None:
        loss_mask = pad([m or [0] for m in loss_masks], 0)[0] * response_mask
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "response_ids": response_ids,
            "response_mask": response_mask, "loss_mask": loss_mask,
            "prompt_index": torch.tensor(prompt_index, dtype=torch.long)}  # fmt: skip

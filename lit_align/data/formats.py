"""Training row formats: each owns how a text row is encoded and how encoded rows become a typed
batch (`lit_align.data.batch`).

An objective names its format (``Objective.row_format``); the datamodule encodes rows with it
and its ``collate`` builds every micro-batch. A new format is a `RowFormat`
(`lit_align.data.row_format`) in its own file, as KTO's unpaired rows are
(`lit_align.data.unpaired_format`), registered in ``FORMATS`` here.

Encoded rows are what the datasets store (token id lists, one per response, and the prompt
length); rollout rows are made by online sampling already as tensors and only collated.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from lit_align.data.batch import GroupBatch, PairBatch, RolloutBatch, SFTBatch
from lit_align.data.collate import encode_group, encode_pair, encode_prompt_response
from lit_align.data.row_format import Row, RowFormat, Scored, join_response, responses_tensors, split_prompt
from lit_align.data.unpaired_format import UnpairedFormat


class SFTFormat(RowFormat):
    """``prompt``, ``response`` → prompt ids and response ids (eos-terminated). A conversation
    row may carry its own ``loss_mask`` over the whole sequence (1 on assistant turns)."""

    name = "sft"

    def encode(self, tokenizer: PreTrainedTokenizerBase, row: Row, max_prompt_length: int, max_length: int) -> Row:
        return encode_prompt_response(tokenizer, row["prompt"], row["response"], max_prompt_length, max_length)

    def from_samples(
        self, prompt: list[int], scored: Sequence[Scored], references: Sequence[Sequence[int]], threshold: float,
        max_length: int | None, prompt_truncated: bool,
    ) -> list[Row]:  # fmt: skip
        """Rejection sampling: the references, then every sample whose reward reaches ``threshold``."""
        rows = []
        for response in [*references, *(ids for ids, reward in scored if reward >= threshold)]:
            ids, cut = join_response(prompt, response, max_length)
            rows.append({"input_ids": ids, "prompt_len": len(prompt), "prompt_truncated": prompt_truncated,
                         "response_truncated": cut})  # fmt: skip
        return rows

    def collate(self, rows: Sequence[Row], pad_id: int) -> SFTBatch:
        split = [split_prompt(r["input_ids"], r["prompt_len"]) for r in rows]
        masks = None
        if rows and "loss_mask" in rows[0]:
            masks = [r["loss_mask"][len(p) :] for r, (p, _) in zip(rows, split, strict=True)]
        fields = responses_tensors([p for p, _ in split], [s for _, s in split], range(len(rows)), pad_id, masks)
        return SFTBatch(**fields)


class PairFormat(RowFormat):
    """``prompt``, ``chosen``, ``rejected`` → one prompt with two responses, chosen first. A row
    with ``partial`` true holds one step of a longer answer in each: no eos ends them."""

    name = "pairs"

    def encode(self, tokenizer: PreTrainedTokenizerBase, row: Row, max_prompt_length: int, max_length: int) -> Row:
        eos = not row.get("partial", False)  # a step of a longer answer (the data's pair_unit=step)
        return encode_pair(tokenizer, row["prompt"], row["chosen"], row["rejected"], max_prompt_length, max_length, eos)

    def from_samples(
        self, prompt: list[int], scored: Sequence[Scored], references: Sequence[Sequence[int]], threshold: float,
        max_length: int | None, prompt_truncated: bool,
    ) -> list[Row]:  # fmt: skip
        """Online DPO: the best-rewarded sample chosen and the worst rejected, when their rewards
        differ (ties go to the earlier sample); references are not paired."""
        if not scored:
            return []
        best = max(range(len(scored)), key=lambda i: scored[i][1])
        worst = min(range(len(scored)), key=lambda i: scored[i][1])
        if scored[best][1] <= scored[worst][1]:
            return []
        chosen, chosen_cut = join_response(prompt, scored[best][0], max_length)
        rejected, rejected_cut = join_response(prompt, scored[worst][0], max_length)
        return [{"chosen_ids": chosen, "rejected_ids": rejected, "prompt_len": len(prompt),
                 "prompt_truncated": prompt_truncated, "response_truncated": chosen_cut or rejected_cut}]  # fmt: skip

    def collate(self, rows: Sequence[Row], pad_id: int) -> PairBatch:
        prompts, responses = [], []
        for row in rows:
            prompt, chosen = split_prompt(row["chosen_ids"], row["prompt_len"])
            prompts.append(prompt)
            responses += [chosen, row["rejected_ids"][len(prompt) :]]
        index = [i for i in range(len(rows)) for _ in range(2)]
        pairs = torch.arange(len(rows))
        ref = torch.tensor([r["ref_logps"] for r in rows]) if rows and "ref_logps" in rows[0] else None
        fields = responses_tensors(prompts, responses, index, pad_id)
        return PairBatch(**fields, chosen=2 * pairs, rejected=2 * pairs + 1, ref_logps=ref)


class GroupFormat(RowFormat):
    """``prompt``, ``responses = [{text, correct, rank, reference}]`` → one question with its chains."""

    name = "groups"

    def encode(self, tokenizer: PreTrainedTokenizerBase, row: Row, max_prompt_length: int, max_length: int) -> Row:
        return encode_group(tokenizer, row["prompt"], row["responses"], max_prompt_length, max_length)

    def from_samples(
        self, prompt: list[int], scored: Sequence[Scored], references: Sequence[Sequence[int]], threshold: float,
        max_length: int | None, prompt_truncated: bool,
    ) -> list[Row]:  # fmt: skip
        """AFT: one group of every scorable sample, ``correct`` where the reward reaches
        ``threshold`` and ``rank`` the reward's dense rank, highest first (a 0/1 verifier gives
        ranks 0 and 1), plus the references as ``reference`` chains (rank 0, correct)."""
        levels = sorted({reward for _, reward in scored}, reverse=True)
        joined = [join_response(prompt, ids, max_length) for ids in [*(ids for ids, _ in scored), *references]]
        return [{
            "sequences": [ids for ids, _ in joined],
            "prompt_len": len(prompt),
            "correct": [reward >= threshold for _, reward in scored] + [True] * len(references),
            "rank": [levels.index(reward) for _, reward in scored] + [0] * len(references),
            "reference": [False] * len(scored) + [True] * len(references),
            "prompt_truncated": prompt_truncated,
            "response_truncated": any(cut for _, cut in joined),
        }]  # fmt: skip

    def collate(self, rows: Sequence[Row], pad_id: int) -> GroupBatch:
        prompts, responses, index = [], [], []
        for g, row in enumerate(rows):
            split = [split_prompt(seq, row["prompt_len"]) for seq in row["sequences"]]
            prompts.append(split[0][0] if split else [])
            responses += [s for _, s in split]
            index += [g] * len(split)
        labels = {key: torch.tensor([v for r in rows for v in r[key]], dtype=torch.long)
                  for key in ("correct", "rank", "reference")}  # fmt: skip
        return GroupBatch(**responses_tensors(prompts, responses, index, pad_id), **labels)


ROLLOUT_TENSORS = ("old_logps", "ref_logps", "advantages", "returns", "old_values")


class RolloutFormat(RowFormat):
    """A prompt with its sampled responses, made by online sampling as tensors: ``prompt_ids``
    ``(Lp,)``, ``response_ids``/``response_mask`` ``(k, T)``, ``rewards`` ``(k,)`` and any of
    ``old_logps``, ``ref_logps``, ``advantages``, ``returns``, ``old_values`` ``(k, T)``."""

    name = "rollout"

    def collate(self, rows: Sequence[Row], pad_id: int) -> RolloutBatch:
        # Tensors throughout: the rows were made as tensors and are only padded together here.
        prompt_width = max(len(r["prompt_ids"]) for r in rows)
        width = max(1, max(int(r["response_mask"].sum(-1).max()) for r in rows))
        prompt_ids = torch.full((len(rows), prompt_width), pad_id, dtype=torch.long)
        prompt_mask = torch.zeros_like(prompt_ids)
        for i, row in enumerate(rows):
            n = len(row["prompt_ids"])
            prompt_ids[i, prompt_width - n :], prompt_mask[i, prompt_width - n :] = row["prompt_ids"], 1

        def stacked(key: str, fill: float = 0) -> Tensor:
            return torch.cat([_fit(r[key], width, fill) for r in rows])

        response_mask = stacked("response_mask").long()
        extras = {key: stacked(key).float() for key in ROLLOUT_TENSORS if rows[0].get(key) is not None}
        index = torch.cat([torch.full((len(r["response_ids"]),), i, dtype=torch.long) for i, r in enumerate(rows)])
        return RolloutBatch(
            prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=stacked("response_ids", pad_id).long(),
            response_mask=response_mask, loss_mask=response_mask.clone(), prompt_index=index,
            rewards=torch.cat([r["rewards"] for r in rows]).float(), **extras,
        )  # fmt: skip


def _fit(values: Tensor, width: int, fill: float) -> Tensor:
    """``(k, T)`` cut or right-padded with ``fill`` to ``(k, width)``."""
    if values.shape[1] >= width:
        return values[:, :width]
    return torch.nn.functional.pad(values, (0, width - values.shape[1]), value=fill)


FORMATS: dict[str, RowFormat] = {
    f.name: f for f in (SFTFormat(), PairFormat(), GroupFormat(), RolloutFormat(), UnpairedFormat())
}

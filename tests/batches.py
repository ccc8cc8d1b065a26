"""Typed batches built from masks, for objective tests that need no tokenizer."""

from __future__ import annotations

import torch

from lit_align.data.batch import GroupBatch, RolloutBatch, SFTBatch


def fields_of(mask: list[list[int]] | torch.Tensor, prompt_index: list[int] | torch.Tensor) -> dict[str, torch.Tensor]:
    mask = torch.as_tensor(mask).long()
    index = torch.as_tensor(prompt_index).long()
    prompts = int(index.max()) + 1 if len(index) else 0
    ones = torch.ones(prompts, 1, dtype=torch.long)
    return {"prompt_ids": ones, "prompt_mask": ones.clone(), "response_ids": torch.zeros_like(mask),
            "response_mask": mask.clone(), "loss_mask": mask.clone(), "prompt_index": index}  # fmt: skip


def sft_batch(mask: list[list[int]]) -> SFTBatch:
    return SFTBatch(**fields_of(mask, list(range(len(mask)))))


def group_batch(mask, group, **labels: torch.Tensor) -> GroupBatch:
    return GroupBatch(**fields_of(mask, group), **labels)


def rollout_batch(mask, prompt_index, rewards=None, **tensors: torch.Tensor) -> RolloutBatch:
    mask = torch.as_tensor(mask)
    rewards = torch.zeros(len(mask)) if rewards is None else torch.as_tensor(rewards, dtype=torch.float32)
    return RolloutBatch(**fields_of(mask, prompt_index), rewards=rewards, **tensors)

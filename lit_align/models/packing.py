"""Prompts packed with their responses: one row per prompt, one model call, a block mask.

Row ``p`` holds prompt ``p`` (left-padded to ``Lp``) followed by a block of ``T`` columns for
each of its responses (at most ``k`` per prompt; a prompt with fewer leaves empty blocks)::

    [ pad pad p0 p1 p2 | r0 r0 r0 pad | r1 r1 pad pad ]      (Lp + k·T columns)

Each response block attends to its prompt's real tokens and causally to itself, never to another
response; its positions continue the prompt's (``prompt length + t``), so every response token
sees exactly what it sees behind its own copy of the prompt. The prompt is computed once, and
the gradients of all its responses meet in it through ordinary attention. The mask is dense
``(P, 1, L, L)``: attention over the packed row costs ``L²`` per prompt (the blocks a response
may not read are computed and masked), which the saved prompt copies and model calls outweigh
on every shape `tools/bench.py` measures (docs/benchmarks.md).

Attention implementations that take an arbitrary 4D mask (``sdpa``, ``eager``) can run it;
the others (flash-attention, flex) get the prefix-cache forward (`lit_align.models.prefix_cache`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

# transformers' attention implementations that read a custom 4D mask as given.
MASKED_ATTENTION = ("sdpa", "eager")


class Packed(NamedTuple):
    """A micro-batch packed for one forward.

    Attributes:
        input_ids, position_ids: ``(P, L)``.
        attention_mask: ``(P, 1, L, L)`` True where a query may read a key (bool, for ``sdpa``)
            or 0 / the dtype's minimum (additive, for ``eager``).
        rows, columns: ``(R, T)`` where the hidden state *before* each response token lies:
            the prompt's last column for ``t = 0``, the previous response column after that.
    """

    input_ids: Tensor
    position_ids: Tensor
    attention_mask: Tensor
    rows: Tensor
    columns: Tensor


def pack(
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    response_ids: Tensor,
    response_mask: Tensor,
    prompt_index: Tensor,
    additive: torch.dtype | None = None,
) -> Packed:
    """Packs ``P`` left-padded prompts ``(P, Lp)`` and ``R`` right-padded responses ``(R, T)``,
    response ``r`` continuing prompt ``prompt_index[r]`` (any order). ``additive``: the dtype of
    an additive mask (eager attention); ``None`` gives a boolean one."""
    device = prompt_ids.device
    (num_prompts, width), (num_responses, length) = prompt_ids.shape, response_ids.shape
    counts = torch.bincount(prompt_index, minlength=num_prompts)
    blocks = int(counts.max())  # one device sync: the packed width
    # Each response's block within its prompt's row: its rank among that prompt's responses.
    order = torch.argsort(prompt_index, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(prompt_index)
    slot[order] = torch.arange(num_responses, device=device) - starts[prompt_index[order]]
    columns = width + slot[:, None] * length + torch.arange(length, device=device)  # (R, T)
    rows = prompt_index[:, None].expand(-1, length)

    total = width + blocks * length
    ids = prompt_ids.new_zeros(num_prompts, total)
    ids[:, :width] = prompt_ids
    ids[rows, columns] = response_ids
    real = torch.zeros(num_prompts, total, dtype=torch.bool, device=device)
    real[:, :width] = prompt_mask.bool()
    real[rows, columns] = response_mask.bool()
    positions = torch.zeros(num_prompts, total, dtype=torch.long, device=device)
    positions[:, :width] = (prompt_mask.long().cumsum(-1) - 1).clamp(min=0)
    offsets = torch.arange(length, device=device).repeat(blocks)
    positions[:, width:] = prompt_mask.long().sum(-1, keepdim=True) + offsets

    # -1 for the prompt's columns, b for response block b.
    block = torch.arange(blocks, device=device).repeat_interleave(length)
    block = torch.cat([block.new_full((width,), -1), block])
    index = torch.arange(total, device=device)
    same_block = (block[None, :] == -1) | (block[None, :] == block[:, None])  # key in prompt or own block
    allowed = (same_block & (index[:, None] >= index[None, :]))[None] & real[:, None, :]
    allowed |= torch.eye(total, dtype=torch.bool, device=device)  # a padding query reads itself: no NaN row
    mask = allowed[:, None]
    if additive is not None:
        mask = torch.zeros(mask.shape, dtype=additive, device=device).masked_fill_(~mask, torch.finfo(additive).min)

    before = columns - 1
    before[:, 0] = width - 1  # the first response token is predicted from the prompt's last position
    return Packed(ids, positions, mask, rows, before)

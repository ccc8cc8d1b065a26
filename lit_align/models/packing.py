"""How a micro-batch of prompts and their responses is laid out for one model call: packed, each
prompt once with its responses and a block mask (`pack`), or flat, each response behind its own
copy of its prompt (`flat_rows`).

Row ``p`` holds prompt ``p`` (left-padded to ``Lp``) followed by its responses back to back,
each its own length; rows are right-padded to the longest::

    [ pad pad p0 p1 p2 | r0 r0 r0 | r1 r1 | pad pad ]      (Lp + the most response tokens of a row)

Each response attends to its prompt's real tokens and causally to itself, never to another
response; its positions continue the prompt's (``prompt length + t``), so every response token
sees exactly what it sees behind its own copy of the prompt. The prompt is computed once, and
the gradients of all its responses meet in it through ordinary attention. The mask is dense
``(P, 1, L, L)``: attention over the packed row costs ``L²`` per prompt (the keys a response
may not read are computed and masked), which the saved prompt copies and model calls outweigh
on every shape `tools/bench.py` measures (docs/benchmarks.md).

Attention implementations that take an arbitrary 4D mask (``sdpa``, ``eager``) can run it;
the others (flash-attention, flex) get the prefix-cache forward (`lit_align.models.prefix_cache`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from lit_align.models.forward import position_ids

# transformers' attention implementations that read a custom 4D mask as given.
MASKED_ATTENTION = ("sdpa", "eager")


class Packed(NamedTuple):
    """A micro-batch packed for one forward.

    Attributes:
        input_ids, position_ids: ``(P, L)``.
        attention_mask: ``(P, 1, L, L)`` True where a query may read a key (bool, for ``sdpa``)
            or 0 / the dtype's minimum (additive, for ``eager``).
        rows, columns: ``(R, T)`` where the hidden state *before* each response token lies:
            the prompt's last column for ``t = 0``, the previous response column after that
            (on padding: some column of the row, never read).
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
    real_response = response_mask.bool()
    lengths = real_response.sum(-1)
    # Each response starts where its prompt's earlier responses end: an exclusive cumulative sum
    # of the lengths in prompt order.
    order = torch.argsort(prompt_index, stable=True)
    ends = torch.cumsum(lengths[order], 0)
    row_total = torch.zeros(num_prompts, dtype=lengths.dtype, device=device).index_add_(0, prompt_index, lengths)
    row_start = torch.cumsum(row_total, 0) - row_total  # where each prompt's responses begin in `ends`
    offset = torch.empty_like(lengths)
    offset[order] = ends - lengths[order] - row_start[prompt_index[order]]
    total = width + int(row_total.max())  # one device sync: the packed width
    steps = torch.arange(length, device=device)
    columns = (width + offset[:, None] + steps).clamp(max=total - 1)  # (R, T); padding's clamped, unread
    rows = prompt_index[:, None].expand(-1, length)
    at = (rows[real_response], columns[real_response])  # the real response tokens' places

    ids = prompt_ids.new_zeros(num_prompts, total)
    ids[:, :width] = prompt_ids
    ids[at] = response_ids[real_response]
    # Which sequence a column belongs to: -1 the prompt, r response r, -2 padding after them.
    owner = torch.full((num_prompts, total), -2, dtype=torch.long, device=device)
    owner[:, :width] = -1
    owner[at] = torch.arange(num_responses, device=device)[:, None].expand(-1, length)[real_response]
    positions = torch.zeros(num_prompts, total, dtype=torch.long, device=device)
    positions[:, :width] = position_ids(prompt_mask)
    prompt_lengths = prompt_mask.long().sum(-1)
    positions[at] = (prompt_lengths[prompt_index][:, None] + steps)[real_response]

    real = owner != -2
    real[:, :width] = prompt_mask.bool()
    index = torch.arange(total, device=device)
    causal = index[:, None] >= index[None, :]
    readable = (owner[:, None, :] == -1) | (owner[:, None, :] == owner[:, :, None])  # the prompt, or its own
    allowed = causal[None] & readable & real[:, None, :]
    allowed |= torch.eye(total, dtype=torch.bool, device=device)  # a padding query reads itself: no NaN row
    mask = allowed[:, None]
    if additive is not None:
        mask = torch.zeros(mask.shape, dtype=additive, device=device).masked_fill_(~mask, torch.finfo(additive).min)

    before = columns - 1
    before[:, 0] = width - 1  # the first response token is predicted from the prompt's last position
    return Packed(ids, positions, mask, rows, before)


class Flat(NamedTuple):
    """Each response behind its own copy of its prompt, right-padded as one sequence: ``(R, W)``
    ids and real-token mask, ``W`` the longest prompt + response; and ``columns`` ``(R, T)``,
    where the hidden state before each response token lies. Real tokens start every row, so for
    a causal model attention alone is exact for them: it needs no mask and no positions."""

    input_ids: Tensor
    attention_mask: Tensor
    columns: Tensor


def flat_rows(
    prompt_ids: Tensor, prompt_mask: Tensor, response_ids: Tensor, response_mask: Tensor, prompt_index: Tensor
) -> Flat:
    """`Flat`: the left-padded prompt then the right-padded response, each row rolled left by
    its prompt's padding so that its real tokens start in the first column, cut to the longest
    prompt + response (not the longest prompt plus the longest response)."""
    prompt_mask = prompt_mask.index_select(0, prompt_index)
    ids = torch.cat([prompt_ids.index_select(0, prompt_index), response_ids], dim=1)
    attention = torch.cat([prompt_mask, response_mask.to(prompt_mask.dtype)], dim=1)
    total, prompt_lengths = ids.shape[1], prompt_mask.long().sum(-1)
    source = (torch.arange(total, device=ids.device) + (prompt_ids.shape[1] - prompt_lengths)[:, None]) % total
    ids, attention = ids.gather(1, source), attention.gather(1, source)
    width = int(attention.sum(-1).max())  # one device sync: the flat width
    steps = torch.arange(response_ids.shape[1], device=ids.device)
    columns = (prompt_lengths[:, None] - 1 + steps).clamp(0, width - 1)  # padding's clamped, unread
    return Flat(ids[:, :width], attention[:, :width], columns)

"""KV caches that let a training forward compute each prompt once for all of its responses.

Where the attention takes no 4D mask (flash-attention), the shared-prefix forward
(`lit_align.models.response_forward`; elsewhere it packs, `lit_align.models.packing`) runs the
model twice: over the ``P`` distinct prompts, recording every layer's keys and values, then over
the ``R`` responses, each attending to its prompt's recorded keys and values (selected by
``prompt_index``) and to its own tokens. Gradients flow back into the prompt pass through the
recorded tensors, so the result is the flat forward's, with each prompt's tokens computed once
instead of once per response.

Both caches are *idempotent*: recording overwrites, and the prefix cache returns
``cat(prefix, new)`` without storing it. Gradient checkpointing replays a layer's forward in
backward; a cache that grew on every call (transformers' `DynamicLayer`) would see the replay
append a second time, so transformers drops caches under checkpointing. These two give the same
keys and values however often a layer runs, which is what makes them safe to keep.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers.cache_utils import Cache, DynamicLayer


class RecordingLayer(DynamicLayer):
    """Keeps the keys and values of the last forward through its layer (the prompt pass)."""

    def update(
        self, key_states: Tensor, value_states: Tensor, *args: object, **kwargs: object
    ) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.keys, self.values = key_states, value_states
        return key_states, value_states


class PrefixLayer(DynamicLayer):
    """A fixed prefix ``(R, kv_heads, Lp, head_dim)`` that every query of the layer may read."""

    def __init__(self, keys: Tensor, values: Tensor) -> None:
        super().__init__()
        self.lazy_initialization(keys, values)
        self.keys, self.values = keys, values

    def update(
        self, key_states: Tensor, value_states: Tensor, *args: object, **kwargs: object
    ) -> tuple[Tensor, Tensor]:
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


def recording_cache() -> Cache:
    """An empty cache that records each layer's keys and values as the prompt pass runs."""
    return Cache(layer_class_to_replicate=RecordingLayer)


def prefix_cache(recorded: Cache, prompt_index: Tensor) -> Cache:
    """The recorded ``(P, …)`` prompt keys and values, row ``r`` holding prompt
    ``prompt_index[r]``'s: ``(R, …)``. The selection is differentiable (its backward sums the
    responses' gradients into their prompt)."""
    layers = []
    for layer in recorded.layers:
        if not isinstance(layer, RecordingLayer) or not layer.is_initialized:
            raise RuntimeError("the prompt pass did not record every layer's keys and values")
        layers.append(PrefixLayer(layer.keys.index_select(0, prompt_index), layer.values.index_select(0, prompt_index)))
    return Cache(layers=layers)

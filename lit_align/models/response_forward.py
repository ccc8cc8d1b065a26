"""The training forward over prompts and their responses: log-probs of the response tokens only.

A micro-batch is ``P`` prompts, left-padded ``(P, Lp)``, and ``R`` responses, right-padded
``(R, T)``, response ``r`` continuing prompt ``prompt_index[r]``. Three ways to run it give the
same numbers:

- **shared** (default), each prompt computed once for all of its responses — a DPO pair's
  prompt once instead of twice, an AFT group's once instead of k + 1 times, a rollout's once
  instead of k times — with gradients from every response meeting in the prompt's computation:
  - *packed* (`lit_align.models.packing`), where the attention takes a 4D mask (``sdpa``,
    ``eager``): one call over rows of a prompt followed by its responses, a block mask keeping
    each response to its prompt and itself;
  - *cache* (`lit_align.models.prefix_cache`), for other attention (flash-attention): the
    prompts once, recording every layer's keys and values, then the responses reading them.
  Packed is one model call instead of two and copies no keys or values per response; on every
  shape `tools/bench.py` measures it is as fast or faster (docs/benchmarks.md).
- **flat**: each response behind its own copy of its prompt, one forward (what TRL and most
  trainers do); kept for comparison and for models that cannot share a prefix.
  A micro-batch with as many responses as prompts (SFT rows) has nothing to share, so it takes
  this path even when sharing is on: the same tokens in one forward.

Either way the LM head runs only on the hidden state before each response token, in chunks
(`lit_align.models.logps_head`): no ``(batch, seq, vocab)`` logits exist. The head is applied
inside the model's own forward (its ``forward`` is swapped for the call's duration), so FSDP2's
hooks on the root module gather and reduce its weight as usual.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from lit_align.models.forward import position_ids
from lit_align.models.logps_head import linear_logps
from lit_align.models.packing import MASKED_ATTENTION, Flat, flat_rows, pack
from lit_align.models.prefix_cache import prefix_cache, recording_cache
from lit_align.models.sharding import decoder_layers


class ResponseOutput(NamedTuple):
    """What one forward gives for ``R`` responses of up to ``T`` tokens.

    Attributes:
        logps: ``(R, T)`` float32 log-prob of each response token, 0 on padding.
        entropy: ``(R, T)`` entropy of each response token's distribution, or ``None``.
        hidden: ``(R, T, hidden)`` the final hidden state before each response token (the
            state a value head reads), or ``None``.
    """

    logps: Tensor
    entropy: Tensor | None
    hidden: Tensor | None


class Unsupported(ValueError):
    """The model cannot run the shared-prefix forward."""


def check_shared_prefix(model: nn.Module) -> None:
    """Refuses, in one line naming the model, a model whose attention cannot read a prefix
    cache: encoders (every token attends to the response too), sliding-window or linear
    attention layers (a prompt is not a plain prefix for them)."""
    name = type(_unwrap(model)).__name__
    if _cache_argument(model) is None:
        raise Unsupported(f"{name} takes no KV cache (not a causal decoder): set model.shared_prefix=false")
    config = _unwrap(model).config.get_text_config()
    kinds = set(getattr(config, "layer_types", None) or ["full_attention"])
    if kinds != {"full_attention"} or getattr(config, "use_sliding_window", False):
        raise Unsupported(f"{name} has {sorted(kinds)} attention layers; set model.shared_prefix=false")


def response_logps(
    model: nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    response_ids: Tensor,
    response_mask: Tensor,
    prompt_index: Tensor,
    shared: bool = True,
    entropy: bool = False,
    entropy_grad: bool = False,
    hidden: bool = False,
) -> ResponseOutput:
    """Log-probs (and on request entropies and hidden states) of each response token under a
    causal LM; see the module docstring. ``response_mask`` ``(R, T)`` is 1 on real tokens."""
    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise Unsupported(f"{type(_unwrap(model)).__name__}'s LM head has a bias; lit_align's head takes none")
    mask = response_mask.bool()
    out: dict[str, Any] = {}

    def scored(before: Tensor) -> Tensor:
        """``(R, T, hidden)`` → ``(R, T)`` log-probs, computed on real tokens only."""
        logps, entropies = linear_logps(before[mask], head.weight, response_ids[mask], entropy, entropy_grad)
        out["entropy"] = None if entropies is None else _scatter(entropies, mask)
        out["hidden"] = before if hidden else None
        return _scatter(logps, mask)

    out["logps"] = _forward(model, prompt_ids, prompt_mask, response_ids, response_mask, prompt_index, shared,
                             head=(head, scored))  # fmt: skip
    return ResponseOutput(out["logps"], out["entropy"], out["hidden"])


def response_hidden(
    trunk: nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    response_ids: Tensor,
    response_mask: Tensor,
    prompt_index: Tensor,
    shared: bool = True,
) -> Tensor:
    """``(R, T, hidden)``: a decoder trunk's (no LM head) final hidden state before each
    response token: a separate critic's input."""
    return _forward(trunk, prompt_ids, prompt_mask, response_ids, response_mask, prompt_index, shared)


def response_scores(
    classifier: nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    response_ids: Tensor,
    response_mask: Tensor,
    prompt_index: Tensor,
    shared: bool = True,
) -> Tensor:
    """``(R,)`` a one-label sequence classifier's score of each prompt + response, read at the
    response's last token (the classifier's own pooling: its last non-pad token)."""
    if not shared or not _shares(prompt_ids, prompt_index):
        flat = flat_rows(prompt_ids, prompt_mask, response_ids, response_mask, prompt_index)
        return classifier(**_flat_call(classifier, flat)).logits[:, 0].float()  # at its last non-pad
    cache = recording_cache()
    with _cache_under_checkpointing(classifier):
        classifier(**_prompt_inputs(classifier, prompt_ids, prompt_mask, cache))
        inputs = _response_inputs(classifier, prompt_mask, response_ids, response_mask, prompt_index, cache)
        return classifier(**inputs).logits[:, 0].float()


# -- the forward: flat, packed or through the prefix cache ---------------------------------------


def _forward(
    model: nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    response_ids: Tensor,
    response_mask: Tensor,
    prompt_index: Tensor,
    shared: bool,
    head: tuple[nn.Module, Callable[[Tensor], Tensor]] | None = None,
) -> Tensor:
    """The hidden state before each response token, ``(R, T, hidden)``, or, with ``head``
    ``(module, fn)``, ``fn`` of it computed in place of the head module's forward."""
    state: dict[str, Any] = {}

    def before_each_token(h: Tensor) -> Tensor:
        if state["pass"] == "prompt":
            return h  # (P, 1, hidden): the last prompt position, kept by logits_to_keep=1
        if state["pass"] == "flat":
            columns = state["flat"].columns
            return h[torch.arange(columns.shape[0], device=h.device)[:, None], columns]  # (R, W, ·) → (R, T, ·)
        if state["pass"] == "packed":
            return h[state["packed"].rows, state["packed"].columns]  # (P, L, hidden) → (R, T, hidden)
        first = state["last_prompt"].index_select(0, prompt_index)  # (R, 1, hidden)
        return torch.cat([first, h[:, :-1]], dim=1)

    def run(inputs: dict[str, Any]) -> Tensor:
        if head is None:
            return before_each_token(model(**inputs).last_hidden_state)
        module, fn = head
        with _replaced_forward(
            module, lambda h: before_each_token(h) if state["pass"] == "prompt" else fn(before_each_token(h))
        ):
            return model(**inputs).logits

    keep = {"logits_to_keep": 1} if head is not None else {}
    if not shared or not _shares(prompt_ids, prompt_index):
        flat = flat_rows(prompt_ids, prompt_mask, response_ids, response_mask, prompt_index)
        state["pass"], state["flat"] = "flat", flat
        return run(_flat_call(model, flat))
    if prefix_method(model) == "packed":
        eager = _unwrap(model).config._attn_implementation == "eager"
        packed = pack(prompt_ids, prompt_mask, response_ids, response_mask, prompt_index,
                      additive=next(model.parameters()).dtype if eager else None)  # fmt: skip
        state["pass"], state["packed"] = "packed", packed
        return run({"input_ids": packed.input_ids, "attention_mask": packed.attention_mask,
                    "position_ids": packed.position_ids, "use_cache": False})  # fmt: skip
    cache = recording_cache()
    with _cache_under_checkpointing(model):
        state["pass"] = "prompt"
        last = run(_prompt_inputs(model, prompt_ids, prompt_mask, cache) | keep)
        state["last_prompt"] = last[:, -1:]
        state["pass"] = "responses"
        return run(_response_inputs(model, prompt_mask, response_ids, response_mask, prompt_index, cache))


def prefix_method(model: nn.Module) -> str:
    """How the shared forward runs: ``packed`` (`lit_align.models.packing`: one call, a block
    mask) where the attention takes a 4D mask, else ``cache`` (a prompt pass, then a response
    pass reading its keys and values)."""
    return "packed" if _unwrap(model).config._attn_implementation in MASKED_ATTENTION else "cache"


def _flat_call(model: nn.Module, flat: Flat) -> dict[str, Any]:
    """A causal decoder (one that takes a KV cache) gets the right-padded rows alone: causal
    attention is exact for their real tokens, and SDPA runs without a mask. Any other model
    (an encoder reward model) gets the padding mask: its tokens would read the padding."""
    if _cache_argument(model) is None:
        return {"input_ids": flat.input_ids, "attention_mask": flat.attention_mask}
    return {"input_ids": flat.input_ids, "use_cache": False}


def _shares(prompt_ids: Tensor, prompt_index: Tensor) -> bool:
    """Whether some prompt has more than one response, so computing it once saves work. With as
    many responses as prompts the flat forward computes the same tokens in one pass instead of
    two. (Shapes only: no device sync. Either path gives the same numbers.)"""
    return prompt_index.shape[0] > prompt_ids.shape[0]


def _prompt_inputs(model: nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, cache: Any) -> dict[str, Any]:
    return {"input_ids": prompt_ids, "attention_mask": prompt_mask, "position_ids": position_ids(prompt_mask),
            _cache_argument(model): cache, "use_cache": True}  # fmt: skip


def _response_inputs(
    model: nn.Module, prompt_mask: Tensor, response_ids: Tensor, response_mask: Tensor, prompt_index: Tensor, cache: Any
) -> dict[str, Any]:
    prompt_lens = prompt_mask.sum(-1).index_select(0, prompt_index)
    positions = prompt_lens[:, None] + torch.arange(response_ids.shape[1], device=response_ids.device)
    attention = torch.cat([prompt_mask.index_select(0, prompt_index), response_mask.to(prompt_mask.dtype)], dim=1)
    return {"input_ids": response_ids, "attention_mask": attention, "position_ids": positions,
            _cache_argument(model): prefix_cache(cache, prompt_index), "use_cache": True}  # fmt: skip


def _scatter(values: Tensor, mask: Tensor) -> Tensor:
    """``(N,)`` values of the true entries of ``mask`` ``(R, T)`` back into ``(R, T)``, 0 elsewhere."""
    return values.new_zeros(mask.shape).masked_scatter(mask, values)


@contextmanager
def _replaced_forward(module: nn.Module, forward: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """``module``'s forward is ``forward`` inside the block (an instance attribute shadows the
    class's method; hooks still run, parameters and state-dict keys are untouched)."""
    module.forward = forward
    try:
        yield
    finally:
        del module.forward


@contextmanager
def _cache_under_checkpointing(model: nn.Module) -> Iterator[None]:
    """transformers drops a layer's cache under gradient checkpointing, since its own caches
    grow on every call and a replayed forward would append twice; ours are idempotent
    (`lit_align.models.prefix_cache`), so the layers may keep them for the block."""
    layers = decoder_layers(model)
    for layer in layers:
        layer._can_checkpoint_with_cache = True
    try:
        yield
    finally:
        for layer in layers:
            del layer._can_checkpoint_with_cache


def _unwrap(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _cache_argument(model: nn.Module) -> str | None:
    """The name under which the model's forward takes a KV cache: ``cache`` (transformers ≥ 5.x)
    or ``past_key_values``; ``None`` for models without one."""
    return _cache_argument_of(type(_unwrap(model)))


@functools.cache
def _cache_argument_of(cls: type) -> str | None:
    """Per class, once: reading a signature costs more than it should on every forward."""
    parameters = inspect.signature(cls.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in parameters), None)

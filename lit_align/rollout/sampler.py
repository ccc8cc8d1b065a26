"""Sampling k completions per prompt from the current policy, with the log-probs objectives need."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import Cache, DynamicCache

from lit_align.models.forward import eval_mode, position_ids
from lit_align.models.response_forward import response_logps
from lit_align.models.sharding import synced_generation
from lit_align.rollout.generate import PLAIN_DECODING


@dataclass
class Rollout:
    """``N = prompts × num_samples`` samples: each prompt once, and every sample's completion.

    Attributes:
        prompt_ids: ``(prompts, P)`` the prompts, left-padded, once each.
        prompt_mask: ``(prompts, P)`` 1 on prompt tokens.
        prompt_index: ``(N,)`` which prompt each sample continues; the samples of one prompt
            are adjacent.
        completion_ids: ``(N, T)`` the sampled ids; after the first eos, padding.
        completion_mask: ``(N, T)`` 1 on completion tokens up to and including eos.
        truncated: ``(N,)`` true where no eos came within ``max_new_tokens``.
        logps: ``(N, T)`` the sampling policy's log-prob of each completion token, from the
            training forward (not generate's scores), 0 on padding; ``None`` when sampled
            ``with_logps=False``.
        completions: ``N`` decoded completions, special tokens removed.
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    prompt_index: Tensor
    completion_ids: Tensor
    completion_mask: Tensor
    truncated: Tensor
    logps: Tensor | None
    completions: list[str]

    def forward_inputs(self) -> dict[str, Tensor]:
        """The prompts and completions as the response forward reads them."""
        return {"prompt_ids": self.prompt_ids, "prompt_mask": self.prompt_mask, "response_ids": self.completion_ids,
                "response_mask": self.completion_mask, "prompt_index": self.prompt_index}  # fmt: skip

    @property
    def input_ids(self) -> Tensor:
        """``(N, P + T)`` each sample as one sequence: its left-padded prompt, then its completion."""
        return torch.cat([self.prompt_ids.index_select(0, self.prompt_index), self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> Tensor:
        return torch.cat([self.prompt_mask.index_select(0, self.prompt_index), self.completion_mask], dim=1)

    @property
    def response_mask(self) -> Tensor:
        """``(N, P + T)`` 1 on the completion tokens of `input_ids`."""
        return torch.cat([torch.zeros_like(self.prompt_mask).index_select(0, self.prompt_index),
                          self.completion_mask], dim=1)  # fmt: skip


class Sampler:
    """Generates ``num_samples`` completions per prompt in-process: no_grad, eval mode, left
    padding and the KV cache, stopping at eos.

    Args:
        num_samples: completions per prompt (k).
        max_new_tokens: completion budget.
        temperature, top_p, top_k: sampling settings (``top_k=0`` disables top-k).
        seed: seeds sampling without touching the global RNG stream; ``None`` uses it as is.
    """

    def __init__(
        self,
        num_samples: int = 4,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
    ) -> None:
        if num_samples < 1 or max_new_tokens < 1:
            raise ValueError(f"num_samples and max_new_tokens must be >= 1, got {num_samples}, {max_new_tokens}")
        if temperature <= 0 or not 0 < top_p <= 1:
            raise ValueError(f"temperature must be > 0 and top_p in (0, 1], got {temperature}, {top_p}")
        self.num_samples, self.max_new_tokens = num_samples, max_new_tokens
        self.temperature, self.top_p, self.top_k, self.seed = temperature, top_p, top_k, seed

    @torch.no_grad()
    def __call__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        seed: int | None = None,
        with_logps: bool = True,
        shared_prefix: bool = True,
    ) -> Rollout:
        """Samples from ``prompt_ids``/``prompt_mask`` ``(prompts, P)``, left-padded.

        ``seed`` overrides the sampler's seed for this call (callers that sample repeatedly
        pass a fresh one each time); ``with_logps=False`` skips the log-prob forward and leaves
        ``logps`` ``None``, for callers that only read the text; ``shared_prefix`` computes each
        prompt once for its samples in that forward.
        """
        with eval_mode(model):
            return self._sample(model, tokenizer, prompt_ids, prompt_mask, self.seed if seed is None else seed,
                                with_logps, shared_prefix)  # fmt: skip

    def _sample(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        seed: int | None,
        with_logps: bool,
        shared_prefix: bool,
    ) -> Rollout:
        prompts, masks = prompt_ids, prompt_mask
        prompt_ids = prompt_ids.repeat_interleave(self.num_samples, dim=0)
        prompt_mask = prompt_mask.repeat_interleave(self.num_samples, dim=0)
        devices = [prompt_ids.device] if prompt_ids.device.type == "cuda" else []
        # Each prompt's prefill once: all but its last token through the model, the cache repeated
        # for its k samples; generate goes on from there (the last token gives the first logits).
        cache = prefilled_cache(model, prompts, masks, self.num_samples) if shared_prefix else None
        with torch.random.fork_rng(devices=devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            sequences = model.generate(
                input_ids=prompt_ids, attention_mask=prompt_mask, max_new_tokens=self.max_new_tokens,
                do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, use_cache=True,
                synced_gpus=synced_generation(model), **PLAIN_DECODING, **({"cache": cache} if cache else {}),
            )  # fmt: skip
        completion = sequences[:, prompt_ids.shape[1] :]
        # Keep tokens up to and including the first eos (pad may equal eos, so ids cannot tell).
        is_eos = completion == tokenizer.eos_token_id
        after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
        keep = (~after_eos).long()
        completion = torch.where(keep.bool(), completion, tokenizer.pad_token_id)
        rollout = Rollout(
            prompt_ids=prompts,
            prompt_mask=masks,
            prompt_index=torch.arange(len(completion), device=completion.device) // self.num_samples,
            completion_ids=completion,
            completion_mask=keep,
            truncated=~is_eos.any(dim=-1),
            logps=None,
            completions=tokenizer.batch_decode(completion, skip_special_tokens=True),
        )
        if with_logps:
            rollout.logps = response_logps(model, **rollout.forward_inputs(), shared=shared_prefix).logps
        return rollout


@torch.no_grad()
def prefilled_cache(model: PreTrainedModel, prompt_ids: Tensor, prompt_mask: Tensor, repeats: int) -> Cache | None:
    """The KV cache of every prompt but its last token, computed once per prompt and repeated
    ``repeats`` times along the batch (sample ``i`` continues prompt ``i // repeats``), as
    `generate` takes it; ``None`` when there is nothing to prefill (one-token prompts)."""
    if prompt_ids.shape[1] < 2:
        return None
    cache = DynamicCache(config=model.config)
    head = prompt_mask[:, :-1]
    model(input_ids=prompt_ids[:, :-1], attention_mask=head, position_ids=position_ids(head), cache=cache,
          use_cache=True, logits_to_keep=1)  # fmt: skip
    cache.batch_repeat_interleave(repeats)
    return cache

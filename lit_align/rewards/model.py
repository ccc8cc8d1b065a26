"""A trained reward model as a reward: any ``AutoModelForSequenceClassification``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from lit_align.data.collate import encode_prompt_response, pad


class ModelReward:
    """A trained reward model's score for prompt + completion (its score head), in batches.

    Inputs are encoded exactly as lit_align encodes training pairs (`encode_prompt_response`:
    bos, the prompt, the completion, eos), so a model trained with ``objective=rm`` scores the
    sequences it was trained on; for a DeBERTa-style model that is ``[CLS] text [SEP]``.

    Args:
        name_or_path: a Hub id (e.g. a DeBERTa reward model) or a local directory (a run's
            ``model/``).
        batch_size: samples per forward.
        max_length: longest input in tokens; a prompt keeps its last ``max_prompt_length``
            tokens and the completion is cut at the end.
        max_prompt_length: the prompt's budget.
        device: where the reward model runs; ``auto`` picks the GPU when there is one.
        trust_remote_code: off unless asked.
    """

    name = "model"

    def __init__(
        self,
        name_or_path: str,
        batch_size: int = 16,
        max_length: int = 512,
        max_prompt_length: int = 384,
        device: str = "cpu",
        trust_remote_code: bool = False,
    ) -> None:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(
            name_or_path, trust_remote_code=trust_remote_code
        ).to(device).eval()  # fmt: skip
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        if max_length <= max_prompt_length:
            raise ValueError(f"max_length={max_length} must exceed max_prompt_length={max_prompt_length}")
        self.batch_size, self.max_length, self.max_prompt_length = batch_size, max_length, max_prompt_length
        self.device = device

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **_: Any) -> list[float | None]:
        scores: list[float | None] = []
        for start in range(0, len(completions), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            ids = [encode_prompt_response(self.tokenizer, p, c, self.max_prompt_length, self.max_length)["input_ids"]
                   for p, c in zip(prompts[chunk], completions[chunk], strict=True)]  # fmt: skip
            input_ids, mask = pad(ids, self.tokenizer.pad_token_id)
            logits = self.model(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)).logits
            scores.extend(logits[:, 0].float().tolist())
        return scores

"""A trained reward model as a reward: any ``AutoModelForSequenceClassification``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer


class ModelReward:
    """A trained reward model's score for prompt + completion (its score head), in batches.

    Args:
        name_or_path: a Hub id (e.g. a DeBERTa reward model) or a local directory.
        batch_size: samples per forward.
        max_length: longest input in tokens; longer inputs keep their end (the completion).
        device: where the reward model runs; ``auto`` picks the GPU when there is one.
        trust_remote_code: off unless asked.
    """

    name = "model"

    def __init__(
        self,
        name_or_path: str,
        batch_size: int = 16,
        max_length: int = 512,
        device: str = "cpu",
        trust_remote_code: bool = False,
    ) -> None:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.truncation_side = "left"
        self.model = AutoModelForSequenceClassification.from_pretrained(
            name_or_path, trust_remote_code=trust_remote_code
        ).to(device).eval()  # fmt: skip
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.batch_size, self.max_length, self.device = batch_size, max_length, device

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **_: Any) -> list[float | None]:
        scores: list[float | None] = []
        for start in range(0, len(completions), self.batch_size):
            texts = [p + c for p, c in zip(prompts[start : start + self.batch_size],
                                           completions[start : start + self.batch_size], strict=True)]  # fmt: skip
            inputs = self.tokenizer(
                texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            ).to(self.device)
            scores.extend(self.model(**inputs).logits[:, 0].float().tolist())
        return scores

"""A trained reward model as a reward: any ``AutoModelForSequenceClassification``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase

from lit_align.data.collate import encode_prompt_response, pad

ENCODINGS = ("concat", "pair")


def encode_segments(
    tokenizer: PreTrainedTokenizerBase, prompt: str, completion: str, max_prompt_length: int, max_length: int
) -> tuple[list[int], list[int]]:
    """``(input_ids, token_type_ids)`` of prompt and completion as the tokenizer's own two-segment
    template makes them, exactly ``tokenizer(prompt, completion)`` when nothing is cut (for
    DeBERTa or BERT: ``[CLS] prompt [SEP] completion [SEP]``, type ids 0 then 1).

    Cut as `encode_prompt_response` cuts: the prompt segment (its special tokens included) keeps
    its last ``max_prompt_length`` tokens and the completion is cut at the end to fit
    ``max_length``. Needs a fast tokenizer (its post-processor holds the template).
    """
    first = tokenizer(prompt, add_special_tokens=False).encodings[0]
    second = tokenizer(completion, add_special_tokens=False).encodings[0]
    keep = max(max_prompt_length - tokenizer.num_special_tokens_to_add(pair=False), 0)
    if len(first) > keep:
        first.truncate(keep, direction="left")
    room = max(max_length - tokenizer.num_special_tokens_to_add(pair=True) - len(first), 0)
    if len(second) > room:
        second.truncate(room)
    encoding = tokenizer.backend_tokenizer.post_processor.process(first, second)
    return encoding.ids, encoding.type_ids


class ModelReward:
    """A trained reward model's score for prompt + completion (its score head), in batches.

    Two encodings, as the model was trained:

    - ``concat`` (default): one sequence, encoded exactly as lit_align encodes training pairs
      (`encode_prompt_response`: bos, the prompt, the completion, eos), so a model trained with
      ``objective=rm`` scores the sequences it was trained on. For a DeBERTa tokenizer that is
      ``[CLS] prompt completion [SEP]``, one segment.
    - ``pair``: the tokenizer's two-segment template (`encode_segments`), ``[CLS] prompt [SEP]
      completion [SEP]`` with token type ids, as cross-encoder reward models trained on
      ``tokenizer(question, answer)`` expect (OpenAssistant's DeBERTa reward models).

    Args:
        name_or_path: a Hub id (e.g. a DeBERTa reward model) or a local directory (a run's
            ``model/``).
        batch_size: samples per forward.
        max_length: longest input in tokens; a prompt keeps its last ``max_prompt_length``
            tokens and the completion is cut at the end.
        max_prompt_length: the prompt's budget.
        device: where the reward model runs; ``auto`` picks the GPU when there is one.
        trust_remote_code: off unless asked.
        encoding: ``concat`` or ``pair``, as above.
    """

    name = "model"

    def __init__(
        self,
        name_or_path: str,
        batch_size: int = 64,
        max_length: int = 512,
        max_prompt_length: int = 384,
        device: str = "auto",
        trust_remote_code: bool = False,
        encoding: Literal["concat", "pair"] = "concat",
    ) -> None:
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        backend = getattr(self.tokenizer, "backend_tokenizer", None)  # a fast tokenizer's
        if encoding == "pair" and getattr(backend, "post_processor", None) is None:
            raise ValueError(f"encoding=pair needs a fast tokenizer with a pair template; {name_or_path}'s has none")
        self.model = AutoModelForSequenceClassification.from_pretrained(
            name_or_path, trust_remote_code=trust_remote_code
        ).to(device).eval()  # fmt: skip
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        if max_length <= max_prompt_length:
            raise ValueError(f"max_length={max_length} must exceed max_prompt_length={max_prompt_length}")
        self.batch_size, self.max_length, self.max_prompt_length = batch_size, max_length, max_prompt_length
        self.device, self.encoding = device, encoding
        # Token type ids tell the segments apart where the model embeds them (BERT; DeBERTa-v3
        # has type_vocab_size 0 and ignores them).
        self.type_ids = encoding == "pair" and "token_type_ids" in self.tokenizer.model_input_names

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **_: Any) -> list[float | None]:
        scores: list[float | None] = []
        for start in range(0, len(completions), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            encoded = [self.encode(p, c) for p, c in zip(prompts[chunk], completions[chunk], strict=True)]
            input_ids, mask = pad([ids for ids, _ in encoded], self.tokenizer.pad_token_id)
            inputs = {"input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device)}
            if self.type_ids:
                types = pad([t for _, t in encoded], self.tokenizer.pad_token_type_id)[0]
                inputs["token_type_ids"] = types.to(self.device)
            scores.extend(self.model(**inputs).logits[:, 0].float().tolist())
        return scores

    def encode(self, prompt: str, completion: str) -> tuple[list[int], list[int]]:
        """``(input_ids, token_type_ids)`` of one sample in the model's encoding."""
        if self.encoding == "pair":
            return encode_segments(self.tokenizer, prompt, completion, self.max_prompt_length, self.max_length)
        ids = encode_prompt_response(self.tokenizer, prompt, completion, self.max_prompt_length, self.max_length)
        return ids["input_ids"], [0] * len(ids["input_ids"])

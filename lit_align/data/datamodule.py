"""The LightningDataModule behind every task: tokenised training rows in the format the
objective consumes, and held-out prompts with gold answers for evaluation by generation."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import lightning as L
import torch
from datasets import Dataset, DatasetDict
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from lit_align.data.answers import exact_match
from lit_align.data.batch import Responses
from lit_align.data.collate import StepCollator, collate_prompts, encode_prompt
from lit_align.data.formats import FORMATS
from lit_align.data.loader import ResumableLoader
from lit_align.errors import ConfigError
from lit_align.schema import holds

# What each objective's training rows look like before tokenising:
#   sft:    prompt, response
#   pairs:  prompt, chosen, rejected
#   groups: prompt, responses = [{text, correct, rank, reference}, ...]
#   unpaired: prompt, completion, label (bool)
#   rollout: a prompt with its samples as tensors (`lit_align.rollout.experience`), made only
#            by online sampling
# Each is encoded and collated by its `lit_align.data.formats.RowFormat`.
BATCH_FORMATS = tuple(FORMATS)
# (argument, test, what the value must be), checked by `check_sizes`.
_SIZES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("batch_size", lambda v: v >= 1, ">= 1"),
    ("micro_batch_size", lambda v: v is None or v >= 1, ">= 1 or null"),
    ("eval_batch_size", lambda v: v >= 1, ">= 1"),
    ("max_prompt_length", lambda v: v >= 1, ">= 1"),
]


def check_sizes(sizes: Mapping[str, Any]) -> None:
    """Refuses batch sizes and lengths that cannot work, naming the ``data.`` key: one check for
    both paths, `AlignDataModule` on its arguments and `validate` on the config's ``data`` node
    (before anything is built). A key absent from ``sizes`` is not checked."""
    for key, ok, expected in _SIZES:
        if key in sizes and not holds(ok, sizes[key]):
            raise ConfigError(f"data.{key} must be {expected}, got {sizes[key]!r}")
    length, prompt = sizes.get("max_length"), sizes.get("max_prompt_length")
    if length is not None and prompt is not None and length <= prompt:
        raise ConfigError(
            f"data.max_length={length} must exceed data.max_prompt_length={prompt} (the prompt budget), "
            "or no response token fits"
        )


class AlignDataModule(L.LightningDataModule):
    """Training rows in ``batch_format``. Held-out (``validation``/``test``) rows with an
    ``answer`` become prompts scored by generation; rows without one (preference pairs, say) are
    built like training rows and scored by the objective.

    Subclasses supply the raw splits in ``build_splits`` and may override ``verify``, the check
    of a generated completion against a row's gold answer.

    Args:
        tokenizer: the policy's tokenizer.
        batch_format: what the objective consumes (``sft``, ``pairs``, ``groups`` or
            ``rollout``); set by ``train`` from the objective, not in the data config.
        eval_by_generation: score held-out rows that have an ``answer`` by generating from
            the policy; false builds them like training rows, scored by the objective (a reward
            model cannot generate). Set by ``train`` from the objective.
        batch_size: rows per optimizer step, over all devices together (a row is one example,
            one pair or one question's group).
        micro_batch_size: rows per forward pass on one device; ``None`` means the whole
            per-device batch. Smaller values trade speed for memory, never the result.
        eval_batch_size: prompts per generation batch at validation and test.
        max_length: longest training sequence, prompt plus response, in tokens.
        max_prompt_length: the prompt budget; longer prompts keep their last tokens.
        num_workers: dataloader worker processes.
        shuffle_seed: seeds the training order: epoch ``e`` is a permutation drawn from
            ``shuffle_seed + e`` (`lit_align.data.loader`), the same whatever else the run
            samples; the configs pass the run's ``seed``.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        batch_format: str = "sft",
        eval_by_generation: bool = True,
        batch_size: int = 32,
        micro_batch_size: int | None = None,
        eval_batch_size: int = 100,
        max_length: int = 256,
        max_prompt_length: int = 192,
        num_workers: int = 0,
        shuffle_seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_format not in BATCH_FORMATS:
            raise ValueError(f"batch_format must be one of {BATCH_FORMATS}, got {batch_format!r}")
        check_sizes({"batch_size": batch_size, "micro_batch_size": micro_batch_size, "eval_batch_size": eval_batch_size,
                     "max_length": max_length, "max_prompt_length": max_prompt_length})  # fmt: skip
        self.tokenizer = tokenizer
        self.batch_format = batch_format
        self.eval_by_generation = eval_by_generation
        self.batch_size = batch_size
        self.micro_batch_size = micro_batch_size
        self.eval_batch_size = eval_batch_size
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.num_workers = num_workers
        self.shuffle_seed = shuffle_seed
        self.splits: dict[str, Dataset] | None = None
        self.stats: dict[str, int] = {}

    def build_splits(self) -> DatasetDict:
        """``train`` in ``self.batch_format``'s row schema; ``validation`` and ``test`` with
        ``prompt`` and ``answer``, or in the training schema when there are no gold answers."""
        raise NotImplementedError

    def verify(self, completion: str, answer: str) -> float | None:
        """1.0 if ``completion`` reaches ``answer``, 0.0 if not, ``None`` if it cannot be judged."""
        return exact_match(completion, answer)

    def eval_metrics(self) -> dict[str, Callable[[str, str], tuple[float, float] | None]]:
        """Held-out metrics besides ``accuracy``: name → ``(completion, answer) -> (value,
        weight)`` or ``None``, averaged with the weights (see `AlignModule`). None by default."""
        return {}

    def prompt_set(self) -> Dataset:
        """The training questions as ``prompt`` rows with the columns a reward reads (``answer``
        at least), for online sampling. Tasks without one cannot be sampled online."""
        raise NotImplementedError(f"{type(self).__name__} has no prompt set for online sampling")

    def setup(self, stage: str | None = None) -> None:
        """Encodes the held-out splits; the training split is encoded when first needed, so an
        online run, whose rows come from `set_train_rows`, never builds the offline one."""
        if self.splits is not None:
            return
        raw = self.build_splits()
        self._raw_train = raw["train"]
        self.splits = {}
        for name in ("validation", "test"):
            split = raw[name]
            # Held-out rows with a gold answer are scored by generation; others (preference
            # pairs, say) by the objective itself.
            by_generation = self.eval_by_generation and "answer" in split.column_names
            if by_generation:
                self.splits[name] = map_rows(split, self._encode_prompt, remove_columns=split.column_names)
            else:
                self.splits[name] = self._encoded(split)

    def set_train_rows(self, rows: list[dict[str, Any]]) -> None:
        """Replaces the training split with ``rows`` (the online sampling buffer); the next
        `train_dataloader` serves them. They come encoded in ``batch_format``'s stored schema
        (the sampled ids, `lit_align.rollout.buffer`; rollout rows as tensors) and are served as
        they are: no Arrow round trip, no re-tokenisation."""
        self.setup()
        assert self.splits is not None
        if self.batch_format == "rollout":
            self.stats |= {"data/train_rows": len(rows), "data/prompt_truncated": 0,
                           "data/response_truncated": sum(int(r["truncated"].sum()) for r in rows)}  # fmt: skip
            self.splits["train"] = rows
            return
        if rows:  # the columns a row takes from the others (`RowFormat.split_columns`), as `_encoded` adds
            added = FORMATS[self.batch_format].split_columns({key: [r[key] for r in rows] for key in rows[0]})
            if added:
                rows = [row | {key: column[i] for key, column in added.items()} for i, row in enumerate(rows)]
        self.stats |= {
            "data/train_rows": len(rows),
            "data/prompt_truncated": sum(bool(r["prompt_truncated"]) for r in rows),
            "data/response_truncated": sum(bool(r["response_truncated"]) for r in rows),
        }
        self.splits["train"] = rows

    def _set_train(self, raw: Dataset) -> None:
        assert self.splits is not None
        if self.batch_format == "rollout":
            raise ValueError("rollout rows come from online sampling (rollout=online), not from a dataset")
        train = self._encoded(raw)
        self.stats |= {
            "data/train_rows": len(train),
            "data/prompt_truncated": sum(train["prompt_truncated"]),
            "data/response_truncated": sum(train["response_truncated"]),
        }
        self.splits["train"] = train

    def train_split(self) -> Dataset:
        self.setup()
        assert self.splits is not None
        if "train" not in self.splits:
            self._set_train(self._raw_train)
        return self.splits["train"]

    def _encoded(self, raw: Dataset) -> Dataset:
        """``raw`` rows encoded in ``batch_format``, with the columns each row takes from the
        others of its split (`RowFormat.split_columns`)."""
        fmt = FORMATS[self.batch_format]
        split = map_rows(raw, self._encode_train, remove_columns=raw.column_names)
        if len(split) == 0:  # mapping no rows makes no columns (num_val=0, say)
            return split
        for name, column in fmt.split_columns(split).items():
            split = split.add_column(name, column)
        return split

    def _encode_train(self, row: dict[str, Any]) -> dict[str, Any]:
        return FORMATS[self.batch_format].encode(self.tokenizer, row, self.max_prompt_length, self.max_length)

    def _encode_prompt(self, row: dict[str, Any]) -> dict[str, Any]:
        ids = encode_prompt(self.tokenizer, row["prompt"], self.max_prompt_length)[0]
        return {"prompt_ids": ids, "answer": row["answer"]}

    def add_reference_logps(self, score: Callable[[dict[str, Any]], torch.Tensor]) -> None:
        """Stores ``score(batch)`` of every training pair as a ``ref_logps`` column.

        ``score`` maps a `PairBatch` to each response's sequence log-prob ``(responses,)``; it
        runs once here, so training keeps no reference model.
        """
        assert self.batch_format == "pairs", "reference log-probs are for pairs"
        self.train_split()
        assert self.splits is not None
        pairs = FORMATS["pairs"]
        for name, split in self.splits.items():
            if "chosen_ids" not in split.column_names:
                continue  # prompts scored by generation need no reference
            values: list[list[float]] = []
            for start in range(0, len(split), self.eval_batch_size):
                rows = split.select(range(start, min(start + self.eval_batch_size, len(split))))
                batch = pairs.collate(list(rows), self.tokenizer.pad_token_id)
                logps = score(batch)
                values.extend(torch.stack([logps[batch.chosen], logps[batch.rejected]], dim=1).tolist())
            self.splits[name] = split.add_column("ref_logps", values)

    def per_device_batch_size(self) -> int:
        world = self.trainer.world_size if self.trainer is not None else 1
        if self.batch_size % world:
            raise ValueError(f"data.batch_size={self.batch_size} is not divisible by the {world} devices")
        return self.batch_size // world

    def train_dataloader(self) -> DataLoader:
        train = self.train_split()
        batch = self.per_device_batch_size()
        collate = partial(FORMATS[self.batch_format].collate, pad_id=self.tokenizer.pad_token_id)
        trainer = self.trainer
        return ResumableLoader(
            train,
            seed=self.shuffle_seed,
            num_replicas=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
            batch_size=batch,
            drop_last=len(train) >= self.batch_size,  # every step sees a full batch
            collate_fn=StepCollator(collate, self.micro_batch_size or batch),
            num_workers=self.num_workers,
        )

    def _held_out_loader(self, split: str) -> DataLoader:
        """Prompt batches for generation, or, for rows without answers, lists of training-format
        micro-batches that the module scores with the objective."""
        assert self.splits is not None, "call setup() first"
        dataset = self.splits[split]
        pad_id = self.tokenizer.pad_token_id
        if "prompt_ids" in dataset.column_names:
            collate = partial(collate_prompts, pad_id=pad_id)
        else:
            fmt = FORMATS[self.batch_format]
            collate = StepCollator(partial(fmt.collate, pad_id=pad_id), self.eval_batch_size)
        # Its own generator: creating the iterator draws a worker seed from it, not from the
        # global RNG, so evaluating more or less often cannot change what training draws.
        return DataLoader(dataset, batch_size=self.eval_batch_size, collate_fn=collate,
                          num_workers=self.num_workers, generator=torch.Generator())  # fmt: skip

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        # Typed micro-batches move their own tensors (Lightning's walk would visit every field).
        if isinstance(batch, list) and batch and isinstance(batch[0], Responses):
            return [micro.to(device) for micro in batch]
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def val_dataloader(self) -> DataLoader:
        return self._held_out_loader("validation")

    def test_dataloader(self) -> DataLoader:
        return self._held_out_loader("test")


def map_rows(dataset: Dataset, function: Callable[..., Any], **kwargs: Any) -> Dataset:
    """``dataset.map(function)`` without hashing ``function``.

    Every dataset here is built in memory (``Dataset.from_list``), so there is no cache file a
    fingerprint could find again; and hashing a bound method pickles the whole datamodule with
    its tokenizer: about 6 s per run, most of a short run's time. A fresh random fingerprint is
    what datasets itself falls back to when the hash fails.
    """
    return dataset.map(function, new_fingerprint=uuid.uuid4().hex, **kwargs)

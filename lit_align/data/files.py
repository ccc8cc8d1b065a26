"""Conversations, preference pairs and ranked chains of thought from local files or the Hub,
through `datasets`.

``source`` is a local ``.json``/``.jsonl``/``.parquet`` file (or a directory of them) or a Hub
dataset name. Rows are checked as they are read: a row missing a required field fails with the
source and the row index; empty responses are dropped and counted in ``stats``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, load_dataset
from transformers import PreTrainedTokenizerBase

from lit_align.data.chat import encode_conversation, render_chat
from lit_align.data.datamodule import AlignDataModule

_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def load_rows(source: str, split: str) -> Dataset:
    """One split of a local file or a Hub dataset."""
    path = Path(source).expanduser()
    if path.suffix in _FORMATS:
        if not path.is_file():
            raise FileNotFoundError(f"data file not found: {source}")
        return load_dataset(_FORMATS[path.suffix], data_files={split: str(path)}, split=split)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in _FORMATS)
        if not files:
            raise FileNotFoundError(f"no .json, .jsonl or .parquet file in {source}")
        return load_dataset(_FORMATS[files[0].suffix], data_files={split: [str(f) for f in files]}, split=split)
    return load_dataset(source, split=split)


def require(row: dict[str, Any], fields: tuple[str, ...], source: str, index: int) -> None:
    """Fails naming the source and row when one of ``fields`` is absent or null."""
    for field in fields:
        if row.get(field) is None:
            raise ValueError(f"{source}: row {index}: missing field {field!r} (needs {', '.join(fields)})")


class _FileDataModule(AlignDataModule):
    """Shared loading: train rows from ``source``; held-out rows from ``eval_source`` or carved
    from the training split."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        source: str,
        split: str = "train",
        eval_source: str | None = None,
        eval_split: str = "test",
        num_val: int = 64,
        num_test: int = 64,
        **loader: Any,
    ) -> None:
        super().__init__(tokenizer, **loader)
        self.source, self.split = source, split
        self.eval_source, self.eval_split = eval_source, eval_split
        self.num_val, self.num_test = num_val, num_test

    def normalize(self, row: dict[str, Any], index: int, source: str) -> dict[str, Any] | None:
        """A raw row in the objective's row schema, or ``None`` to drop it."""
        raise NotImplementedError

    def _rows(self, dataset: Dataset, source: str) -> list[dict[str, Any]]:
        rows = [self.normalize(row, i, source) for i, row in enumerate(dataset)]
        self.stats["data/dropped_rows"] = self.stats.get("data/dropped_rows", 0) + sum(r is None for r in rows)
        return [r for r in rows if r is not None]

    def build_splits(self) -> DatasetDict:
        rows = self._rows(load_rows(self.source, self.split), self.source)
        if self.eval_source:
            held_out = self._rows(load_rows(self.eval_source, self.eval_split), self.eval_source)
            train = rows
        else:
            held_out, train = rows[: self.num_val + self.num_test], rows[self.num_val + self.num_test :]
        if not train:
            raise ValueError(f"{self.source}: no training rows left after holding out {len(held_out)}")
        if held_out and all(r.get("answer") is not None for r in held_out):  # evaluate by generation
            held_out = [{"prompt": r["prompt"], "answer": r["answer"]} for r in held_out]
        train = [{k: v for k, v in r.items() if k != "answer"} for r in train]
        validation, test = held_out[: self.num_val], held_out[self.num_val : self.num_val + self.num_test]
        return DatasetDict(
            train=Dataset.from_list(train),
            validation=Dataset.from_list(validation or held_out),
            test=Dataset.from_list(test or held_out),
        )


class PreferenceDataModule(_FileDataModule):
    """Rows ``prompt``, ``chosen``, ``rejected`` as text, or ``chosen``/``rejected`` as
    conversations (lists of ``{"role", "content"}`` ending in the assistant's turn, the prompt
    being the shared earlier turns) rendered with the tokenizer's chat template.

    Held-out pairs are evaluated with the objective itself (``val/rewards/accuracies`` …); with
    ``batch_format="sft"`` the chosen response is the SFT target. Pairs with an empty chosen or
    rejected response are dropped and counted.
    """

    def normalize(self, row: dict[str, Any], index: int, source: str) -> dict[str, Any] | None:
        require(row, ("chosen", "rejected"), source, index)
        if isinstance(row["chosen"], list):  # conversational
            prompt, chosen = render_chat(self.tokenizer, row["chosen"])
            rejected = render_chat(self.tokenizer, row["rejected"])[1]
            empty = not row["chosen"][-1].get("content") or not row["rejected"][-1].get("content")
        else:
            require(row, ("prompt",), source, index)
            prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
            empty = not chosen.strip() or not rejected.strip()
        if empty:
            return None
        if self.batch_format == "sft":
            return {"prompt": prompt, "response": chosen}
        if self.batch_format == "pairs":
            return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
        raise ValueError("data=preference provides pairs (objective=dpo) or SFT rows (objective=sft), not groups")


class CotRankingDataModule(_FileDataModule):
    """Rows ``question``, optional ``answer`` and reference ``solution``, and ``responses``: a
    list of ``{"text", "correct"}`` (binary feedback) or ``{"text", "rank"}`` (ranking, lower is
    better, ties allowed).

    A missing label is derived from the other (``correct`` = rank 0; rank = 0 if correct else 1).
    The ``solution``, when present, joins the group as a reference chain (trained by L_VFT only).
    Held-out questions are evaluated by generation against ``answer``. Empty responses are
    dropped and counted (``data/empty_responses``).

    Args:
        prompt_template: how a question becomes a prompt; ``{question}`` is replaced.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_template: str = "{question}\n", **kwargs: Any):
        super().__init__(tokenizer, **kwargs)
        self.prompt_template = prompt_template

    def normalize(self, row: dict[str, Any], index: int, source: str) -> dict[str, Any] | None:
        require(row, ("question", "responses"), source, index)
        prompt = self.prompt_template.format(question=row["question"])
        answer = None if row.get("answer") is None else str(row["answer"])
        responses = []
        for j, response in enumerate(row["responses"]):
            if response.get("text") is None or (response.get("correct") is None and response.get("rank") is None):
                raise ValueError(f"{source}: row {index}: response {j} needs 'text' and 'correct' or 'rank'")
            if not response["text"].strip():
                self.stats["data/empty_responses"] = self.stats.get("data/empty_responses", 0) + 1
                continue
            rank = response.get("rank")
            correct = response.get("correct")
            correct = bool(correct) if correct is not None else rank == 0
            rank = int(rank) if rank is not None else (0 if correct else 1)
            responses.append({"text": response["text"], "correct": correct, "rank": rank, "reference": False})
        if row.get("solution"):
            responses.append({"text": row["solution"], "correct": True, "rank": 0, "reference": True})
        if not responses:
            return None
        if self.batch_format == "sft":
            best = [r for r in responses if r["correct"]]
            return {"prompt": prompt, "response": best[0]["text"], "answer": answer} if best else None
        if self.batch_format != "groups":
            raise ValueError("data=cot_ranking provides groups (objective=aft) or SFT rows, not pairs")
        return {"prompt": prompt, "responses": responses, "answer": answer}


class ChatDataModule(_FileDataModule):
    """SFT on conversations: rows with ``messages``, a list of ``{"role", "content"}`` (system,
    user and assistant turns), from local files or the Hub. Every assistant turn is trained;
    system and user turns and the template's role markers are context only. Held-out
    conversations are scored with the objective (``val/loss``: the assistant tokens' NLL).

    Preference conversations (``chosen``/``rejected`` messages) are ``data=preference``.
    """

    def normalize(self, row: dict[str, Any], index: int, source: str) -> dict[str, Any] | None:
        require(row, ("messages",), source, index)
        if self.batch_format != "sft":
            raise ValueError(
                "data=chat provides SFT rows (objective=sft); preference conversations are data=preference"
            )
        messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
        if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
            return None  # nothing to train on
        return {"messages": messages}

    def _encode_train(self, row: dict[str, Any]) -> dict[str, Any]:
        return encode_conversation(self.tokenizer, row["messages"], self.max_length)

"""Conversations, preference pairs and ranked chains of thought from local files or the Hub.

``source`` is a local ``.json``/``.jsonl``/``.parquet`` file (or a directory of them) or a Hub
dataset name, read by `lit_align.data.rows`. Every row is checked as it is read, and each problem
has a class:

- ``not_utf8``, ``malformed_json``: a JSON Lines line that is not UTF-8 or not JSON;
- ``missing_field``, ``wrong_type``: a required field absent or null, or of the wrong type or
  shape (``chosen`` a number, ``messages`` not a list of ``{role, content}``, ``chosen`` and
  ``rejected`` conversations with different earlier turns, ``rank`` not an integer, ``correct``
  not a boolean, …);
- ``empty``: nothing to train on (an empty prompt, response or assistant turn);
- ``too_long``: a prompt over ``max_prompt_length`` or a sequence over ``max_length`` tokens;
- ``no_correct_response``: a ranked group read as SFT rows with no correct chain to imitate;
- ``tie``: with ``drop_ties``, a preference pair whose two responses have the same score;
- ``identical_pair``: a preference pair whose chosen response is its rejected one (no signal).

``on_bad_row`` (the first four classes), ``on_empty`` and ``on_long`` decide whether such a row
fails the run, in one line naming the file and the row's 1-based line in JSON Lines (its 0-based
index in an array, Parquet or Hub dataset), or is skipped (``tie``, ``identical_pair`` and
``no_correct_response`` always are); ``on_long=truncate`` keeps long rows and cuts them instead (see
`encode_prompt_response`). Skipped rows are counted in ``stats``, the datamodule's counters that
``train`` prints and stores in ``summary.json``: ``data/dropped_rows`` in all and
``data/dropped_rows/<class>`` for each class that occurred.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal, get_args

from datasets import Dataset, DatasetDict
from lightning.pytorch.utilities import rank_zero_warn
from transformers import PreTrainedTokenizerBase

from lit_align.data.chat import encode_conversation, render_chat
from lit_align.data.datamodule import AlignDataModule
from lit_align.data.rows import (
    BadRow,
    DataError,
    Row,
    bad_row,
    is_local,
    load_rows,
    messages_field,
    require,
    text_field,
    wrong_type,
)
from lit_align.data.unpaired_format import unpair

OnBadRow = Literal["error", "skip"]
OnEmpty = Literal["skip", "error"]
OnLong = Literal["error", "skip", "truncate"]

# The option that decides what becomes of a row of each class; ``None``: always skipped.
_OPTION: dict[str, str | None] = {
    "empty": "on_empty", "too_long": "on_long", "no_correct_response": None, "tie": None, "identical_pair": None,
}  # fmt: skip
# A normalised ranked row carries the number of empty responses it lost under this key until it
# is kept, so rows that are skipped after all (too long, say) do not count theirs.
_EMPTY_RESPONSES = "_empty_responses"


class _FileDataModule(AlignDataModule):
    """Shared loading: train rows from ``source``; held-out rows from ``eval_source`` or carved
    from the training split. Rows are checked as they are read (see the module docstring).

    Args:
        source: a ``.json``/``.jsonl``/``.parquet`` file, a folder of them, or a Hub dataset.
        split: the split of a Hub dataset to train on.
        subset: the Hub dataset's config (``load_dataset``'s ``name``: ``main`` for
            ``openai/gsm8k``), for ``source`` and a Hub ``eval_source`` alike, as held-out rows
            usually come from another split of the same dataset; ``None`` takes the dataset's
            default. Local files have none: set with no Hub dataset to read, it is refused.
        eval_source: where held-out rows come from; ``None`` carves the first ``num_val +
            num_test`` rows off the training rows.
        eval_split: the split of a Hub ``eval_source``.
        num_val: held-out rows for validation.
        num_test: held-out rows for test.
        on_bad_row: a row that is not UTF-8 or not JSON, or lacks a field, or has one of the
            wrong type or shape: ``error`` fails naming the file and row, ``skip`` drops it.
        on_empty: a row with an empty prompt, response or assistant turn: ``skip`` drops it
            (and an empty chain from a ranked group, counted in ``data/empty_responses``, the
            group kept while a chain is left), ``error`` fails naming the file and row.
        on_long: a row whose prompt is over ``max_prompt_length`` tokens, or whose prompt and
            response are over ``max_length``: ``error`` fails naming the file and row, ``skip``
            drops it, ``truncate`` keeps it cut (the prompt's start, the response's end; counted
            in ``data/prompt_truncated`` and ``data/response_truncated``).
        loader: `AlignDataModule`'s arguments.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        source: str,
        split: str = "train",
        subset: str | None = None,
        eval_source: str | None = None,
        eval_split: str = "test",
        num_val: int = 64,
        num_test: int = 64,
        on_bad_row: OnBadRow = "error",
        on_empty: OnEmpty = "skip",
        on_long: OnLong = "error",
        **loader: Any,
    ) -> None:
        super().__init__(tokenizer, **loader)
        for name, value, kind in (
            ("on_bad_row", on_bad_row, OnBadRow),
            ("on_empty", on_empty, OnEmpty),
            ("on_long", on_long, OnLong),
        ):
            if value not in get_args(kind):
                raise ValueError(f"{name} must be one of {get_args(kind)}, got {value!r}")
        if subset is not None and all(is_local(s) for s in (source, eval_source) if s):
            local = " and ".join(s for s in (source, eval_source) if s)
            raise ValueError(
                f"subset={subset!r} picks a Hub dataset's config (load_dataset's name), but the data is "
                f"local ({local}): remove subset"
            )
        self.source, self.split, self.subset = source, split, subset
        self.eval_source, self.eval_split = eval_source, eval_split
        self.num_val, self.num_test = num_val, num_test
        self.on_bad_row, self.on_empty, self.on_long = on_bad_row, on_empty, on_long

    def normalize(self, row: Row, index: int, source: str) -> Row:
        """A raw row in the objective's row schema; raises `BadRow` for a row it cannot use."""
        raise NotImplementedError

    def _check_length(self, row: Row, source: str, index: int) -> None:
        if self.on_long == "truncate":
            return  # the encoder cuts and flags; `_set_train` counts the training rows it cut
        # The row is tokenised here and again when its split is encoded: it has to go before
        # held-out rows are carved off, and the encoder's own flags are the exact test.
        encoded = self._encode_train(row)
        if encoded["prompt_truncated"]:
            raise bad_row(
                source, index, "too_long", f"prompt longer than max_prompt_length={self.max_prompt_length} tokens"
            )
        if encoded["response_truncated"]:
            raise bad_row(source, index, "too_long", f"sequence longer than max_length={self.max_length} tokens")

    def _rows(self, source: str, split: str) -> list[Row]:
        rows: list[Row] = []
        skipped: Counter[str] = Counter()
        first = ""
        for file, index, raw in load_rows(source, split, self.subset):
            try:
                if isinstance(raw, BadRow):
                    raise raw
                row = self.normalize(raw, index, file)
                parts = unpair(row) if self.batch_format == "unpaired" and "chosen" in row else [row]
                for part in parts:
                    self._check_length(part, file, index)
            except BadRow as bad:
                option = _OPTION.get(bad.reason, "on_bad_row")
                if option and getattr(self, option) == "error":
                    hint = ", truncate cuts them" if option == "on_long" else ""
                    raise BadRow(bad.reason, f"{bad}; data.{option}=skip skips such rows{hint}") from None
                skipped[bad.reason] += 1
                first = first or str(bad)
                continue
            self._count("data/empty_responses", row.pop(_EMPTY_RESPONSES, 0))
            rows.extend(parts)
        self.stats["data/dropped_rows"] = self.stats.get("data/dropped_rows", 0) + skipped.total()  # always there
        for reason, n in skipped.items():
            self._count(f"data/dropped_rows/{reason}", n)
        if skipped:
            counts = ", ".join(f"{reason} {n}" for reason, n in sorted(skipped.items()))
            rank_zero_warn(f"skipped {skipped.total()} rows of {source} ({counts}); the first: {first}")
        return rows

    def _count(self, key: str, n: int) -> None:
        """Adds ``n`` to ``stats[key]``; a counter appears once it is not 0."""
        if n:
            self.stats[key] = self.stats.get(key, 0) + n

    def build_splits(self) -> DatasetDict:
        rows = self._rows(self.source, self.split)
        if self.eval_source:
            held_out = self._rows(self.eval_source, self.eval_split)
            train = rows
        else:
            held_out, train = rows[: self.num_val + self.num_test], rows[self.num_val + self.num_test :]
        if not train:
            raise DataError(f"{self.source}: no training rows left after holding out {len(held_out)}")
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
    being the shared earlier turns) rendered with the tokenizer's chat template; other columns
    (UltraFeedback's ``prompt``, ``prompt_id``, ``messages``) are ignored.

    Held-out pairs are evaluated with the objective itself (``val/rewards/accuracies`` …); with
    ``batch_format="sft"`` the chosen response is the SFT target. A pair with an empty prompt,
    chosen or rejected response is ``empty``, dropped and counted by default (``on_empty``); a
    conversational pair whose earlier turns differ (two prompts, no preference between answers
    to one) is ``wrong_type``; bad rows otherwise follow ``on_bad_row`` and ``on_long`` (see
    `_FileDataModule`).

    Args:
        drop_ties: read ``score_chosen`` and ``score_rejected`` (numbers, as in UltraFeedback)
            and drop a pair whose scores are equal, which prefers neither response (counted in
            ``data/dropped_rows/tie``). SFT rows, the chosen response alone, keep it.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, drop_ties: bool = False, **kwargs: Any) -> None:
        super().__init__(tokenizer, **kwargs)
        self.drop_ties = drop_ties

    def normalize(self, row: Row, index: int, source: str) -> Row:
        require(row, ("chosen", "rejected"), source, index)
        if isinstance(row["chosen"], list) or isinstance(row["rejected"], list):  # conversational
            chosen_turns = messages_field(row, "chosen", source, index)
            rejected_turns = messages_field(row, "rejected", source, index)
            for field, turns in (("chosen", chosen_turns), ("rejected", rejected_turns)):
                if turns[-1]["role"] != "assistant":
                    raise bad_row(source, index, "wrong_type", f"{field!r} must end with the assistant's turn")
                if not turns[-1]["content"].strip():
                    raise bad_row(source, index, "empty", f"the last turn of {field!r} is empty")
            if chosen_turns[:-1] != rejected_turns[:-1]:
                what = "'chosen' and 'rejected' must share the turns before the last"
                raise bad_row(source, index, "wrong_type", what)
            prompt, chosen = render_chat(self.tokenizer, chosen_turns)
            rejected = render_chat(self.tokenizer, rejected_turns)[1]
        else:
            texts = {f: text_field(row, f, source, index) for f in ("prompt", "chosen", "rejected")}
            for field, text in texts.items():
                if not text.strip():
                    raise bad_row(source, index, "empty", f"{field!r} is empty")
            prompt, chosen, rejected = texts["prompt"], texts["chosen"], texts["rejected"]
        if self.batch_format == "sft":
            return {"prompt": prompt, "response": chosen}
        if self.batch_format not in ("pairs", "unpaired"):  # unpaired: each pair is two rows (`unpair`)
            raise ValueError(
                "data=preference provides pairs (objective=dpo), unpaired rows (objective=kto) or SFT rows "
                "(objective=sft), not groups"
            )
        if chosen == rejected:  # no preference to learn, and a zero margin some losses divide by
            raise bad_row(source, index, "identical_pair", "'chosen' is the same as 'rejected'")
        if self.drop_ties:
            fields = ("score_chosen", "score_rejected")
            require(row, fields, source, index)
            for field in fields:
                if isinstance(row[field], bool) or not isinstance(row[field], int | float):
                    raise wrong_type(source, index, f"{field!r} must be a number (drop_ties reads it)", row[field])
            if row["score_chosen"] == row["score_rejected"]:
                raise bad_row(source, index, "tie", f"score_chosen = score_rejected = {row['score_chosen']}")
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


class CotRankingDataModule(_FileDataModule):
    """Rows ``question``, optional ``answer`` and reference ``solution``, and ``responses``: a
    list of ``{"text", "correct"}`` (binary feedback) or ``{"text", "rank"}`` (ranking, lower is
    better, ties allowed), ``correct`` a boolean and ``rank`` an integer.

    A missing label is derived from the other (``correct`` = rank 0; rank = 0 if correct else 1).
    The ``solution``, when present, joins the group as a reference chain (trained by L_VFT only).
    Held-out questions are evaluated by generation against ``answer``. An empty response is
    dropped from its group and counted (``data/empty_responses``), a group left with none is
    ``empty``; with ``on_empty=error`` either fails. As SFT rows (the first correct chain), a
    group with no correct chain is dropped (``no_correct_response``). Bad rows otherwise
    follow ``on_bad_row`` and ``on_long`` (see `_FileDataModule`).

    Args:
        prompt_template: how a question becomes a prompt; ``{question}`` is replaced.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_template: str = "{question}\n", **kwargs: Any):
        super().__init__(tokenizer, **kwargs)
        self.prompt_template = prompt_template

    def normalize(self, row: Row, index: int, source: str) -> Row:
        require(row, ("question", "responses"), source, index)
        question = text_field(row, "question", source, index)
        if not question.strip():
            raise bad_row(source, index, "empty", "'question' is empty")
        answer = row.get("answer")
        if answer is not None and not isinstance(answer, (str, int, float)):
            raise wrong_type(source, index, "'answer' must be text or a number", answer)
        solution = text_field(row, "solution", source, index) if row.get("solution") is not None else None
        if not isinstance(row["responses"], list):
            raise wrong_type(source, index, "'responses' must be a list", row["responses"])
        responses, empty = [], 0
        for j, response in enumerate(row["responses"]):
            responses.append(self._response(response, j, source, index))
            if not responses[-1]["text"].strip():
                if self.on_empty == "error":
                    raise bad_row(source, index, "empty", f"response {j} is empty")
                responses.pop()
                empty += 1
        if solution:
            responses.append({"text": solution, "correct": True, "rank": 0, "reference": True})
        if not responses:
            raise bad_row(source, index, "empty", "every response is empty")
        prompt = self.prompt_template.format(question=question)
        answer = None if answer is None else str(answer)
        if self.batch_format == "sft":
            best = [r for r in responses if r["correct"]]
            if not best:
                raise bad_row(source, index, "no_correct_response", "no correct response to train on")
            return {"prompt": prompt, "response": best[0]["text"], "answer": answer, _EMPTY_RESPONSES: empty}
        if self.batch_format != "groups":
            raise ValueError("data=cot_ranking provides groups (objective=aft) or SFT rows, not pairs")
        return {"prompt": prompt, "responses": responses, "answer": answer, _EMPTY_RESPONSES: empty}

    @staticmethod
    def _response(response: Any, j: int, source: str, index: int) -> Row:
        """One chain as ``{"text", "correct", "rank", "reference"}``, its labels checked."""
        if not isinstance(response, dict):
            raise wrong_type(source, index, f"response {j} must be {{text, correct or rank}}", response)
        text, correct, rank = response.get("text"), response.get("correct"), response.get("rank")
        if text is None or (correct is None and rank is None):
            raise bad_row(source, index, "missing_field", f"response {j} needs 'text' and 'correct' or 'rank'")
        if not isinstance(text, str):
            raise wrong_type(source, index, f"response {j}: 'text' must be text", text)
        if correct is not None and not isinstance(correct, bool):
            raise wrong_type(source, index, f"response {j}: 'correct' must be true or false", correct)
        if isinstance(rank, float) and rank.is_integer():  # pandas stores an int column with gaps as floats
            rank = int(rank)
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int)):
            raise wrong_type(source, index, f"response {j}: 'rank' must be an integer", rank)
        correct = correct if correct is not None else rank == 0
        rank = rank if rank is not None else (0 if correct else 1)
        return {"text": text, "correct": correct, "rank": rank, "reference": False}


class ChatDataModule(_FileDataModule):
    """SFT on conversations: rows with ``messages``, a list of ``{"role", "content"}`` (system,
    user and assistant turns), from local files or the Hub. Every assistant turn is trained;
    system and user turns and the template's role markers are context only. Held-out
    conversations are scored with the objective (``val/loss``: the assistant tokens' NLL).

    A conversation with no assistant turn, or with an empty one (which would teach the model to
    answer with nothing), is ``empty``, dropped and counted by default (``on_empty``); bad rows
    otherwise follow ``on_bad_row`` and ``on_long`` (see `_FileDataModule`). Preference
    conversations (``chosen``/``rejected`` messages) are ``data=preference``.
    """

    def normalize(self, row: Row, index: int, source: str) -> Row:
        if self.batch_format != "sft":
            raise ValueError(
                "data=chat provides SFT rows (objective=sft); preference conversations are data=preference"
            )
        messages = messages_field(row, "messages", source, index)
        assistant = [j for j, m in enumerate(messages) if m["role"] == "assistant"]
        if not assistant:
            raise bad_row(source, index, "empty", "no assistant turn to train on")
        for j in assistant:
            if not messages[j]["content"].strip():
                raise bad_row(source, index, "empty", f"assistant turn {j} is empty")
        return {"messages": messages}

    def _encode_train(self, row: Row) -> Row:
        return encode_conversation(self.tokenizer, row["messages"], self.max_length)

"""What the built-in generated tasks share: problems with a gold ``solution`` and ``answer``,
turned into training rows of every batch format and into held-out prompts."""

from __future__ import annotations

import random
from typing import Any

from datasets import Dataset, DatasetDict

from lit_align.data.chat import chat_prompt
from lit_align.data.datamodule import AlignDataModule, map_rows
from lit_align.data.unpaired_format import unpair


class GeneratedTaskDataModule(AlignDataModule):
    """A task generated from a seed: subclasses make the problems and the wrong responses.

    ``generate()`` returns ``train``/``validation``/``test`` splits with a ``prompt_field``
    column (the text ``prompt_template`` formats), ``answer`` (what `verify` and the rewards
    read) and ``solution`` (the gold response). ``wrong_responses(rng, row, n)`` returns ``n``
    ``(text, rank)`` pairs, rank ≥ 1 counting what is wrong. From those:

    - ``sft``: prompt → ``demonstration(rng, row)`` (the solution unless a subclass makes the
      demonstrations imperfect);
    - ``pairs``: the solution is chosen, one wrong response rejected; with ``pair_unit="step"``
      the pair is cut to its first wrong step (`first_step_pair`);
    - ``unpaired``: the pair's two responses as two rows, the solution desirable, the wrong
      one not (with ``pair_unit="step"``, the two steps);
    - ``groups``: the solution (rank 0) and ``group_size - 1`` wrong responses;
    - ``rollout``: prompts only (online sampling brings the rows);
    - held-out rows: prompt and ``answer``, or training rows when ``eval_by_generation`` is off.
    """

    prompt_field = "question"
    use_chat_template = False  # render prompts as a user turn of the tokenizer's chat template

    def __init__(
        self, tokenizer: Any, seed: int, group_size: int, prompt_template: str, pair_unit: str = "chain", **loader: Any
    ) -> None:
        super().__init__(tokenizer, **loader)
        if group_size < 2:
            raise ValueError(f"group_size must be >= 2 (a correct response and a wrong one), got {group_size}")
        if pair_unit not in ("chain", "step"):
            raise ValueError(f"pair_unit must be 'chain' or 'step', got {pair_unit!r}")
        self.seed, self.group_size, self.prompt_template = seed, group_size, prompt_template
        self.pair_unit = pair_unit
        self._problems: DatasetDict | None = None

    def generate(self) -> DatasetDict:
        raise NotImplementedError

    def wrong_responses(self, rng: random.Random, row: dict[str, Any], n: int) -> list[tuple[str, int]]:
        raise NotImplementedError

    def demonstration(self, rng: random.Random, row: dict[str, Any]) -> str:
        """The SFT target for a training problem: its gold solution."""
        return row["solution"]

    def problems(self) -> DatasetDict:
        """The generated problems, made once."""
        if self._problems is None:
            self._problems = self.generate()
        return self._problems

    def _prompt(self, row: dict[str, Any]) -> str:
        text = self.prompt_template.format(**{self.prompt_field: row[self.prompt_field]})
        if self.use_chat_template and self.tokenizer.chat_template:
            return chat_prompt(self.tokenizer, [{"role": "user", "content": text}])
        return text

    def prompt_set(self) -> Dataset:
        """The training problems as prompts with their ``answer`` and ``solution``."""
        return map_rows(
            self.problems()["train"], lambda row: {"prompt": self._prompt(row)}, remove_columns=[self.prompt_field]
        )

    def build_splits(self) -> DatasetDict:
        splits = self.problems()
        rng = random.Random(self.seed + 1)  # the wrong responses, apart from the problems

        def train_row(row: dict[str, Any]) -> dict[str, Any]:
            prompt, solution = self._prompt(row), row["solution"]
            if self.batch_format == "sft":
                return {"prompt": prompt, "response": self.demonstration(rng, row)}
            if self.batch_format == "rollout":
                return {"prompt": prompt}
            if self.batch_format in ("pairs", "unpaired"):  # unpaired: made two rows by `unpair`
                rejected = self.wrong_responses(rng, row, 1)[0][0]
                if self.pair_unit == "step":
                    return first_step_pair(prompt, solution, rejected)
                return {"prompt": prompt, "chosen": solution, "rejected": rejected}
            responses = [{"text": solution, "correct": True, "rank": 0, "reference": False}]
            responses += [{"text": text, "correct": False, "rank": rank, "reference": False}
                          for text, rank in self.wrong_responses(rng, row, self.group_size - 1)]  # fmt: skip
            return {"prompt": prompt, "responses": responses}

        def held_out_row(row: dict[str, Any]) -> dict[str, Any]:
            if not self.eval_by_generation:  # scored by the objective, like training rows
                return train_row(row)
            return {"prompt": self._prompt(row), "answer": row["answer"]}

        def rows(made: list[dict[str, Any]]) -> Dataset:
            if self.batch_format == "unpaired":  # the correct chain thumbs-up, the corrupted one down
                made = [u for row in made for u in (unpair(row) if "chosen" in row else [row])]
            return Dataset.from_list(made)

        return DatasetDict(
            train=rows([train_row(r) for r in splits["train"]]),
            validation=rows([held_out_row(r) for r in splits["validation"]]),
            test=rows([held_out_row(r) for r in splits["test"]]),
        )


def first_step_pair(prompt: str, chosen: str, rejected: str) -> dict[str, Any]:
    """A pair of line-per-step chains cut to its first wrong step, as Step-DPO builds its pairs
    (Lai et al. 2024, arXiv 2406.18629, Sec. 3): the steps both chains share join the prompt,
    and chosen and rejected are the first step where they differ, each with its line break
    (``partial``: no eos follows, the answer goes on; when the step ends both chains, the pair
    is whole and keeps its eos). ``partial`` is the row's, so a step that ends only one of the
    chains loses its eos too; the built-in task's chains have equally many lines.

    Why: a wrong chain's later steps compute correctly from the wrong value (`inject_errors`),
    so a whole-chain pair pushes down correct arithmetic after the error; and an objective that
    scores each response alone (KTO) pushes down the correct steps the two chains share.
    """
    good, bad = chosen.split("\n"), rejected.split("\n")
    k = next((i for i, (g, b) in enumerate(zip(good, bad, strict=False)) if g != b), None)
    if k is None:
        raise ValueError(f"no step of one chain differs from the other's: {chosen!r} / {rejected!r}")
    shared = "".join(line + "\n" for line in good[:k])

    def step(lines: list[str]) -> str:  # with the break that ends it, unless it ends the chain
        return lines[k] + ("\n" if k + 1 < len(lines) else "")

    last = k + 1 == len(good) and k + 1 == len(bad)
    return {"prompt": prompt + shared, "chosen": step(good), "rejected": step(bad), "partial": not last}

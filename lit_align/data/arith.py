"""The built-in task: multi-step arithmetic word problems with a chain-of-thought solution.

Every problem is generated from a seed, so the task needs no download and its answers are exact.
A problem with ``steps=2`` looks like::

    question: Mia has 12 marbles. Then Mia finds 7 more. Then Mia loses 5. How many marbles does
              Mia have now?
    solution: 12+7=19
              19-5=14
              #### 14

The solution writes one equation per step and ends in GSM8K's ``#### answer`` line, so the same
answer extraction serves this task and GSM8K (`lit_align.data.answers`).
"""

from __future__ import annotations

import random
import re
from typing import Any

from datasets import Dataset, DatasetDict
from transformers import PreTrainedTokenizerBase

from lit_align.data.generated import GeneratedTaskDataModule

NAMES = (
    "Mia", "Tom", "Ann", "Leo", "Ivy", "Sam", "Zoe", "Max", "Eva", "Ben",
    "Lily", "Omar", "Nina", "Raj", "Kim", "Hugo", "Ada", "Yuki", "Noah", "Sara",
)  # fmt: skip
ITEMS = (
    "apples", "marbles", "stamps", "coins", "books", "shells", "pens", "cards", "stickers",
    "beads", "cookies", "pebbles", "buttons", "eggs", "keys", "cups", "hats", "kites",
)  # fmt: skip
GAIN = ("finds {n} more", "buys {n} more", "gets {n} more", "is given {n} more", "wins {n} more")
LOSS = ("loses {n}", "gives away {n}", "sells {n}", "uses {n}", "breaks {n}")
SCALE = {2: "doubles them", 3: "triples them"}


def make_problem(rng: random.Random, digits: int, steps: int, operations: str) -> dict[str, str]:
    """One problem as ``{"question", "solution", "answer"}``.

    Operands have 1 to ``digits`` digits; each step applies one of ``operations`` (``+``, ``-``,
    ``*``). Subtraction never goes below zero and multiplication is by 2 or 3, so every
    intermediate value is a non-negative integer a reader can check.
    """
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    high = 10**digits - 1
    value = rng.randint(1, high)
    sentences = [f"{name} has {value} {item}."]
    equations = []
    for _ in range(steps):
        op = rng.choice(operations)
        if op == "-" and value == 0:
            op = "+"
        if op == "+":
            n = rng.randint(1, high)
            new, verb = value + n, rng.choice(GAIN)
        elif op == "-":
            n = rng.randint(1, value)
            new, verb = value - n, rng.choice(LOSS)
        elif op == "*":
            n = rng.choice((2, 3))
            new, verb = value * n, SCALE[n]
        else:
            raise ValueError(f"unknown operation {op!r}; use any of '+-*'")
        sentences.append(f"Then {name} {verb.format(n=n)}.")
        equations.append(f"{value}{op}{n}={new}")
        value = new
    sentences.append(f"How many {item} does {name} have now?")
    solution = "\n".join([*equations, f"#### {value}"])
    return {"question": " ".join(sentences), "solution": solution, "answer": str(value)}


_EQUATION = re.compile(r"^(-?\d+)([+\-*])(\d+)=(-?\d+)$")


def inject_errors(rng: random.Random, solution: str, wrong_steps: int) -> str:
    """The chain of ``solution`` with exactly ``wrong_steps`` equations miscomputed.

    A wrong step's result is off by 1 to 3; later steps compute correctly from the wrong value
    they are given, so the chain has exactly ``wrong_steps`` errors and its final answer is
    wrong (errors that would cancel out are redrawn).
    """
    *lines, final = solution.split("\n")
    steps = [_EQUATION.match(line).groups() for line in lines]  # type: ignore[union-attr]
    if not 1 <= wrong_steps <= len(steps):
        raise ValueError(f"wrong_steps must be in 1..{len(steps)}, got {wrong_steps}")
    correct = int(final.removeprefix("#### "))
    while True:
        wrong = set(rng.sample(range(len(steps)), wrong_steps))
        value = int(steps[0][0])
        equations = []
        for i, (_, op, n, _) in enumerate(steps):
            result = {"+": value + int(n), "-": value - int(n), "*": value * int(n)}[op]
            if i in wrong:
                result += rng.choice((-3, -2, -1, 1, 2, 3))
            equations.append(f"{value}{op}{n}={result}")
            value = result
        if value != correct:
            return "\n".join([*equations, f"#### {value}"])


def arith_splits(
    seed: int = 0,
    num_train: int = 20000,
    num_val: int = 200,
    num_test: int = 500,
    digits: int = 1,
    steps: int = 3,
    operations: str = "+-",
) -> DatasetDict:
    """Train/validation/test splits with columns ``question``, ``solution``, ``answer``.

    Held-out questions never occur in the training split. The splits depend only on the
    arguments, so every training seed is evaluated on the same held-out problems.
    """
    if digits < 1 or steps < 1:
        raise ValueError(f"digits and steps must be >= 1, got digits={digits}, steps={steps}")
    if not operations or set(operations) - set("+-*"):
        raise ValueError(f"operations must be a non-empty string over '+-*', got {operations!r}")
    rng = random.Random(seed)
    seen: set[str] = set()

    def draw(n: int) -> list[dict[str, str]]:
        rows: list[dict[str, str]] = []
        misses = 0  # consecutive repeats: many in a row means the problem space is used up
        while len(rows) < n:
            row = make_problem(rng, digits, steps, operations)
            if row["question"] in seen:
                misses += 1
                if misses > 10_000:
                    raise ValueError(f"ran out of distinct problems after {len(seen)}; ask for fewer")
                continue
            misses = 0
            seen.add(row["question"])
            rows.append(row)
        return rows

    # Held-out splits first, so the training split is what gives way when problems collide.
    test, val = draw(num_test), draw(num_val)
    train = draw(num_train)
    return DatasetDict(
        train=Dataset.from_list(train),
        validation=Dataset.from_list(val),
        test=Dataset.from_list(test),
    )


class ArithDataModule(GeneratedTaskDataModule):
    """The built-in arithmetic task in every batch format, with no download.

    - ``sft``: question → its chain of thought.
    - ``pairs``: the correct chain is chosen; rejected is the same chain with 1 to ``steps``
      miscomputed equations.
    - ``groups``: per question, the correct chain and ``group_size - 1`` corrupted ones, each
      labelled ``correct`` and ranked by its number of wrong steps (0 for the correct chain;
      equal counts tie).

    Args:
        seed: the task instance. Fixed by default (not the training seed), so runs with
            different training seeds are evaluated on the same held-out problems.
        num_train, num_val, num_test: split sizes.
        digits: operands have 1 to ``digits`` digits.
        steps: operations per problem.
        operations: the operations drawn from, any of ``+-*``.
        group_size: chains per question in the ``groups`` format (>= 2).
        prompt_template: how a question becomes a prompt; ``{question}`` is replaced.
        pair_unit: what a preference pair (and KTO's unpaired rows) holds: ``chain``, the whole
            correct and corrupted chains; ``step``, the first wrong step and the correct one in
            its place, after the steps they share (Step-DPO's pairs, `first_step_pair`).
        **loader: batch and length settings of `AlignDataModule`.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        seed: int = 0,
        num_train: int = 20000,
        num_val: int = 200,
        num_test: int = 500,
        digits: int = 1,
        steps: int = 3,
        operations: str = "+-",
        group_size: int = 4,
        prompt_template: str = "{question}\n",
        pair_unit: str = "chain",
        **loader: Any,
    ) -> None:
        super().__init__(tokenizer, seed, group_size, prompt_template, pair_unit, **loader)
        self.task = dict(
            seed=seed, num_train=num_train, num_val=num_val, num_test=num_test,
            digits=digits, steps=steps, operations=operations,
        )  # fmt: skip

    def generate(self) -> DatasetDict:
        """Problems with ``question``, ``solution`` and ``answer``."""
        return arith_splits(**self.task)

    def wrong_responses(self, rng: random.Random, row: dict[str, Any], n: int) -> list[tuple[str, int]]:
        """The solution with 1 to ``steps`` miscomputed equations, ranked by how many."""
        wrong = [rng.randint(1, self.task["steps"]) for _ in range(n)]
        return [(inject_errors(rng, row["solution"], k), k) for k in wrong]

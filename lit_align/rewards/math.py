"""Final-answer verification for math word problems, in two strengths.

- `exact_match` (evaluation's `val/accuracy`, in `lit_align.data.answers`): the ``#### <answer>``
  line that the built-in task and GSM8K end with, else the last number, compared as plain
  numbers. Fast and exact for integer answers.
- `MathReward` (the correctness reward): the same ``####`` precedence, then symbolic equality through
  math-verify, so it also accepts ``0.75`` for ``3/4`` or ``\\boxed{\\frac12}`` for ``0.5``,
  which `exact_match` scores wrong. Both agree on the built-in task's integer answers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from math_verify import parse, verify

from lit_align.data.answers import FINAL

_BOXED = re.compile(r"\\boxed\{")
_ANSWER_IS = re.compile(r"answer(?: is)?\s*[:=]?\s*([^\n]+)", re.IGNORECASE)


def final_answer_text(completion: str) -> str:
    """The part of a completion that states its final answer, by precedence: GSM8K's ``#### x``
    line, then ``\\boxed{x}`` (left for math-verify to read), then "answer (is) x", else all."""
    final = FINAL.search(completion)
    if final is not None:
        return final.group(1)
    if _BOXED.search(completion):
        return completion
    phrase = _ANSWER_IS.findall(completion)
    return phrase[-1] if phrase else completion


class MathReward:
    """The correctness reward: 1.0 when the completion's final answer equals the gold ``answer``.

    Equality is symbolic through math-verify (HuggingFace's verifier, built on sympy), so
    ``1,000`` = ``1000``, ``$5.00`` = ``5``, ``0.75`` = ``3/4`` and ``\\boxed{\\frac{1}{2}}`` = ``0.5``:
    a well-kept parser of LaTeX and plain expressions instead of hand-written rules. GSM8K's
    ``#### x`` line takes precedence over numbers written after it. ``None`` when the gold
    answer cannot be parsed; an empty or unparsable completion scores 0.0.
    """

    name = "math"

    def __call__(
        self, prompts: Sequence[str], completions: Sequence[str], answer: Sequence[Any], **_: Any
    ) -> list[float | None]:
        scores: list[float | None] = []
        for completion, gold_text in zip(completions, answer, strict=True):
            gold = parse(str(gold_text)) if gold_text is not None else []
            if not gold:
                scores.append(None)
                continue
            predicted = parse(final_answer_text(completion))
            scores.append(float(bool(predicted) and verify(gold, predicted)))
        return scores

"""The instruction-following reward: the share of an instruction's constraints a completion meets,
judged by the checks of the built-in instruction task (`lit_align.data.instruct_checks`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lit_align.data.instruct_checks import constraints_met


class InstructionReward:
    """The fraction of an instruction's constraints a completion meets (1.0: all of them);
    ``None`` when the gold ``answer`` is not an instruction spec."""

    name = "instruct"

    def __call__(
        self, prompts: Sequence[str], completions: Sequence[str], answer: Sequence[Any], **_: Any
    ) -> list[float | None]:
        counts = [constraints_met(c, gold) for c, gold in zip(completions, answer, strict=True)]
        return [None if count is None else count[0] / count[1] for count in counts]

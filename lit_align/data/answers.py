"""Final answers of the generated tasks and GSM8K: the ``#### <answer>`` line they end with,
else the last number, compared as plain numbers after removing thousands separators, currency
signs and trailing zeros (``1,000`` = ``$1000`` = ``1000.00``). `exact_match` is evaluation's
`val/accuracy`; `lit_align.rewards.math.MathReward` is the symbolic reward built on the same
``####`` precedence.
"""

from __future__ import annotations

import re

FINAL = re.compile(r"####\s*([^\n]*)")
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


def normalize_number(text: str) -> str | None:
    """Canonical form of a number written as text, or ``None`` if ``text`` holds none.

    >>> normalize_number("$1,000.50")
    '1000.5'
    """
    match = _NUMBER.search(text)
    if match is None:
        return None
    number = match.group(0).replace(",", "").replace("$", "")
    if "." in number:
        number = number.rstrip("0").rstrip(".")
    if number in ("-0", ""):
        number = "0"
    return number


def extract_answer(completion: str) -> str | None:
    """The final answer of a completion: the ``#### x`` line if present, else the last number."""
    final = FINAL.search(completion)
    if final is not None:
        return normalize_number(final.group(1))
    numbers = _NUMBER.findall(completion)
    return normalize_number(numbers[-1]) if numbers else None


def exact_match(completion: str, answer: str) -> float | None:
    """1.0 if the completion's final answer equals ``answer``, else 0.0.

    ``None`` when the gold ``answer`` holds no number: the sample cannot be scored, which is not
    the same as wrong.
    """
    gold = normalize_number(answer)
    if gold is None:
        return None
    return float(extract_answer(completion) == gold)

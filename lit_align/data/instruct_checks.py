"""Verifiable instructions, in the spirit of IFEval (Zhou et al. 2023, arXiv 2311.07911): every
instruction is a task plus format constraints, each checked by a program.

An instruction's ``spec`` (stored as JSON in the data's ``answer`` column) names its task and
modifiers, e.g. ``{"task": "repeat", "word": "cat", "n": 3, "upper": true, "brackets": false,
"end": "done"}`` for "Repeat the word cat 3 times. Use capital letters only. End with the word
done." The compliant response is ``CAT CAT CAT DONE``.

Tasks (the content constraint): ``repeat`` a word n times; ``countdown`` from b to a; ``reverse``
(spell a word backwards); ``list`` k distinct items of a category, its ``exclude`` not among
them. Modifiers (format constraints): ``upper`` (no lowercase letters), ``brackets`` (the answer
wrapped in ``[ ]``),
``end`` (the last word). The content is checked case-insensitively, inside the brackets and
before the end word, so each constraint is judged on its own.
"""

from __future__ import annotations

import json
import re
from typing import Any

CATEGORIES = {
    "colors": ("red", "blue", "green", "black", "white", "pink", "gray", "brown", "gold", "orange", "purple", "yellow"),
    "animals": ("cat", "dog", "cow", "fox", "owl", "bee", "pig", "hen", "rat", "bat", "elk", "yak"),
    "fruits": ("apple", "pear", "plum", "lime", "fig", "kiwi", "mango", "grape", "peach", "lemon"),
    "vegetables": ("bean", "corn", "kale", "leek", "onion", "pea", "beet", "carrot", "radish", "potato"),
    "metals": ("iron", "gold", "tin", "lead", "zinc", "copper", "silver", "nickel"),
    "drinks": ("tea", "milk", "water", "juice", "coffee", "soda", "cocoa", "cider"),
}
TASKS = ("repeat", "countdown", "reverse", "list")
MODIFIERS = ("upper", "brackets", "end")


def content(spec: dict[str, Any]) -> str:
    """The task's answer in lowercase, without format modifiers (for ``list``, the first k items
    of the spec's ``items``)."""
    task = spec["task"]
    if task == "repeat":
        return " ".join([spec["word"]] * spec["n"])
    if task == "countdown":
        return " ".join(str(x) for x in range(spec["start"], spec["stop"] - 1, -1))
    if task == "reverse":
        return spec["word"][::-1]
    if task == "list":
        return ", ".join(spec["items"])
    raise ValueError(f"unknown task {task!r}")


def render(answer: str, spec: dict[str, Any]) -> str:
    """``answer`` with the spec's modifiers applied: end word, capitals, brackets."""
    if spec.get("end"):
        answer = f"{answer} {spec['end']}"
    if spec.get("upper"):
        answer = answer.upper()
    if spec.get("brackets"):
        answer = f"[{answer}]"
    return answer


def checks(response: str, spec: dict[str, Any]) -> dict[str, bool]:
    """Which of the instruction's constraints ``response`` meets: ``task`` always, and one entry
    per modifier the spec sets (``upper``, ``brackets``, ``end``)."""
    text = response.strip()
    result: dict[str, bool] = {}
    bracketed = text.startswith("[") and text.endswith("]")
    if spec.get("brackets"):
        result["brackets"] = bracketed
    inner = text[1:-1].strip() if bracketed else text
    if spec.get("upper"):
        letters = re.sub(r"[^A-Za-z]", "", text)
        result["upper"] = bool(letters) and letters == letters.upper()
    if spec.get("end"):
        words = inner.split()
        result["end"] = bool(words) and words[-1].lower() == spec["end"].lower()
        if result["end"]:
            inner = inner[: inner.lower().rfind(spec["end"].lower())].strip()
    result["task"] = _task_met(inner.lower(), spec)
    return result


def _task_met(text: str, spec: dict[str, Any]) -> bool:
    task = spec["task"]
    if task == "list":
        items = [item.strip() for item in text.split(",")]
        vocabulary = CATEGORIES[spec["category"]]
        allowed = set(vocabulary) - {spec.get("exclude")}
        return len(items) == spec["k"] and len(set(items)) == spec["k"] and all(i in allowed for i in items)
    if task == "reverse":
        return text == spec["word"][::-1]
    # repeat and countdown: the same words in the same order, whatever the spacing
    return text.replace(",", " ").split() == content(spec).split()


def parse_spec(answer: Any) -> dict[str, Any] | None:
    """The spec from its JSON text, or ``None`` when it is not a readable instruction spec."""
    try:
        spec = json.loads(answer) if isinstance(answer, str) else answer
    except (TypeError, ValueError):
        return None
    if not isinstance(spec, dict) or spec.get("task") not in TASKS:
        return None
    return spec


def constraints_met(completion: str, answer: Any) -> tuple[int, int] | None:
    """How many of the instruction's constraints ``completion`` meets, and how many it has;
    ``None`` when ``answer`` is not an instruction spec."""
    spec = parse_spec(answer)
    if spec is None:
        return None
    met = checks(completion, spec)
    return sum(met.values()), len(met)

"""The built-in instruction task: every constraint's verifier, the generator, and short runs."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from torchmetrics import MeanMetric

from lit_align.data.instruct import InstructDataModule, make_instruction, violate
from lit_align.data.instruct_checks import checks, parse_spec
from lit_align.rewards.instruct import InstructionReward
from lit_align.train import train
from tests.conftest import make_cfg

REPEAT = {"task": "repeat", "word": "cat", "n": 3}
COUNTDOWN = {"task": "countdown", "start": 9, "stop": 6}
REVERSE = {"task": "reverse", "word": "mango"}
LIST = {"task": "list", "category": "fruits", "k": 3, "exclude": "grape", "items": ["apple", "pear", "fig"]}


@pytest.mark.parametrize(
    ("spec", "response", "met"),
    [
        (REPEAT, "cat cat cat", True),
        (REPEAT, "Cat  cat CAT", True),  # content is judged case- and spacing-insensitively
        (REPEAT, "cat cat", False),
        (REPEAT, "cat cat cat cat", False),
        (REPEAT, "dog dog dog", False),
        (COUNTDOWN, "9 8 7 6", True),
        (COUNTDOWN, "9, 8, 7, 6", True),
        (COUNTDOWN, "6 7 8 9", False),
        (COUNTDOWN, "9 8 6", False),
        (REVERSE, "ognam", True),
        (REVERSE, "mango", False),
        (REVERSE, "o g n a m", False),
        (LIST, "apple, pear, fig", True),
        (LIST, "kiwi, lime, plum", True),  # any distinct items of the category
        (LIST, "apple, pear", False),
        (LIST, "apple, apple, fig", False),
        (LIST, "apple, pear, dog", False),
        (LIST, "apple, pear, grape", False),  # the excluded item
        (LIST, "", False),
    ],
)
def test_task_constraints(spec, response, met):
    assert checks(response, spec) == {"task": met}


@pytest.mark.parametrize(
    ("modifiers", "response", "expected"),
    [
        ({"upper": True}, "CAT CAT CAT", {"upper": True, "task": True}),
        ({"upper": True}, "CAT cat CAT", {"upper": False, "task": True}),
        ({"brackets": True}, "[cat cat cat]", {"brackets": True, "task": True}),
        ({"brackets": True}, "cat cat cat", {"brackets": False, "task": True}),
        ({"brackets": True}, "[cat cat]", {"brackets": True, "task": False}),
        ({"end": "done"}, "cat cat cat done", {"end": True, "task": True}),
        ({"end": "done"}, "cat cat cat", {"end": False, "task": True}),
        ({"end": "done"}, "cat cat done cat", {"end": False, "task": False}),
        ({"upper": True, "brackets": True, "end": "stop"}, "[CAT CAT CAT STOP]",
         {"upper": True, "brackets": True, "end": True, "task": True}),
        ({"upper": True, "brackets": True, "end": "stop"}, "[cat cat cat]",
         {"upper": False, "brackets": True, "end": False, "task": True}),
    ],
)  # fmt: skip
def test_format_constraints_are_judged_each_on_its_own(modifiers, response, expected):
    assert checks(response, REPEAT | modifiers) == expected


def test_upper_needs_letters():
    assert checks("9 8 7 6 DONE", COUNTDOWN | {"upper": True, "end": "done"})["upper"]
    assert not checks("9 8 7 6", COUNTDOWN | {"upper": True})["upper"]


def test_reward_is_the_fraction_met_and_none_when_unjudgeable():
    spec = json.dumps(REPEAT | {"upper": True, "end": "done"})
    reward = InstructionReward()
    scores = reward(["p"] * 4, ["CAT CAT CAT DONE", "cat cat cat done", "CAT CAT", "x"], answer=[spec] * 3 + ["7"])
    # all three; all but capitals; capitals only (two words, and no end word)
    assert scores[:3] == pytest.approx([1.0, 2 / 3, 1 / 3]) and scores[3] is None
    assert parse_spec("not json") is None and parse_spec('{"task": "dance"}') is None


def test_generated_responses_comply_and_violations_break_what_they_say():
    rng = random.Random(0)
    for _ in range(2000):
        row = make_instruction(rng, max_count=6, max_modifiers=3)
        spec = row["spec"]
        assert all(checks(row["response"], spec).values()), row
        constraints = ["task", *(m for m in ("upper", "brackets", "end") if spec.get(m))]
        broken = set(rng.sample(constraints, rng.randint(1, len(constraints))))
        result = checks(violate(rng, spec, broken), spec)
        assert {name for name, ok in result.items() if not ok} == broken, (row, broken, result)


def test_held_out_instructions_are_a_small_share_of_every_task():
    """Held-out instructions are never trained on; were they a large share of a task's
    instructions (as with a small vocabulary), training would skip that part of the task and
    held-out accuracy would measure recall of the rest, not the skill."""
    rng = random.Random(0)
    held_out = {make_instruction(rng, 6, 2)["instruction"] for _ in range(500)}
    drawn, hits = Counter(), Counter()
    for _ in range(8000):
        row = make_instruction(rng, 6, 2)
        drawn[row["spec"]["task"]] += 1
        hits[row["spec"]["task"]] += row["instruction"] in held_out
    assert set(drawn) == {"repeat", "countdown", "reverse", "list"}
    assert max(hits[task] / drawn[task] for task in drawn) < 0.15, {t: hits[t] / drawn[t] for t in drawn}


def test_datamodule_splits_formats_and_verify(tokenizer):
    def build(batch_format):
        dm = InstructDataModule(tokenizer, num_train=50, num_val=20, num_test=20, batch_format=batch_format)
        dm.setup()
        return dm

    dm = build("sft")
    problems = dm.problems()
    assert not set(problems["train"]["instruction"]) & set(problems["test"]["instruction"])
    assert len(set(problems["validation"]["instruction"])) == 20
    assert problems["train"]["instruction"] == build("pairs").problems()["train"]["instruction"]  # seeded
    row = problems["test"][0]
    assert dm.verify(row["solution"], row["answer"]) == 1.0 and dm.verify("nonsense", row["answer"]) == 0.0
    pairs = build("pairs")._raw_train
    for pair in pairs:
        assert pair["chosen"] != pair["rejected"]
    groups = build("groups")._raw_train
    assert all(len(g["responses"]) == 4 and g["responses"][0]["rank"] == 0 for g in groups)
    assert {"prompt", "answer", "solution"} <= set(dm.prompt_set().column_names)


def test_imperfect_demonstrations_skip_modifiers_only_in_sft_rows(tokenizer):
    def rows(batch_format, rate):
        dm = InstructDataModule(tokenizer, num_train=300, num_val=4, num_test=4, batch_format=batch_format,
                                demo_modifier_rate=rate)  # fmt: skip
        dm.setup()
        return dm.problems()["train"], dm._raw_train

    problems, exact = rows("sft", 1.0)
    assert exact["response"] == problems["solution"]
    _, sloppy = rows("sft", 0.0)
    skipped = 0
    for problem, row in zip(problems, sloppy, strict=True):
        met = checks(row["response"], json.loads(problem["answer"]))
        assert met.pop("task") and not any(met.values())  # the task done, every modifier skipped
        skipped += row["response"] != problem["solution"]
    assert skipped > 150  # most instructions have a modifier
    _, pairs = rows("pairs", 0.0)
    assert pairs["chosen"] == problems["solution"]  # preference data judges every constraint


SMALL = ["data=instruct", "data.num_train=64", "data.num_val=8", "data.num_test=8"]


@pytest.mark.parametrize(
    "overrides",
    [
        [],  # SFT
        ["objective=dpo", "init=none"],
        ["objective=rloo", "init=none", "reward=instruct", "rollout.num_prompts=4"],
    ],
    ids=["sft", "dpo", "rloo"],
)
def test_instruct_runs(tmp_path, overrides):
    summary = train(make_cfg(tmp_path, *SMALL, *overrides))
    final = summary["final"]
    assert summary["steps"] == 6 and final["val/instruction_accuracy"] == final["val/accuracy"]
    assert {"val/constraint_accuracy", "test/constraint_accuracy", "test/instruction_accuracy"} <= set(final)


def test_instruction_and_constraint_accuracy_pool_as_ifeval_does(tokenizer):
    metrics = InstructDataModule(tokenizer).eval_metrics()
    spec = json.dumps(REPEAT | {"upper": True, "end": "done"})
    cases = {"CAT CAT CAT DONE": (1.0, 3.0), "CAT CAT DONE": (2 / 3, 3.0), "cat cat": (0.0, 3.0)}
    for response, constraint in cases.items():
        assert metrics["constraint_accuracy"](response, spec) == pytest.approx(constraint)
        assert metrics["instruction_accuracy"](response, spec) == (float(constraint[0] == 1.0), 1.0)
    assert metrics["constraint_accuracy"]("x", "42") is None  # not an instruction: not judged
    # Pooled over constraints: an instruction with 3 counts 3 times as much as one with 1.

    pooled = MeanMetric()
    for value, weight in (metrics["constraint_accuracy"]("CAT CAT DONE", spec),
                          metrics["constraint_accuracy"]("cat", json.dumps(REPEAT))):  # fmt: skip
        pooled.update(value, weight)
    assert pooled.compute().item() == pytest.approx(2 / 4)

import random
import re

import pytest

from lit_align.data.answers import exact_match
from lit_align.data.arith import ArithDataModule, arith_splits, inject_errors, make_problem
from lit_align.data.generated import first_step_pair


def _check_solution(row: dict[str, str]) -> None:
    """Every equation holds, each step starts from the last result, and #### is the result."""
    *equations, final = row["solution"].split("\n")
    value = None
    for equation in equations:
        lhs, rhs = equation.split("=")
        for op in "+-*":
            if op in lhs:
                a, b = lhs.split(op)
                break
        assert value is None or int(a) == value
        result = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
        assert result == int(rhs) >= 0
        value = result
    assert final == f"#### {value}" and row["answer"] == str(value)


@pytest.mark.parametrize("digits,steps,operations", [(1, 2, "+-"), (2, 3, "+-*"), (3, 1, "*")])
def test_problems_are_correct(digits, steps, operations):
    rng = random.Random(0)
    for _ in range(200):
        row = make_problem(rng, digits, steps, operations)
        _check_solution(row)
        assert len(row["solution"].split("\n")) == steps + 1
        assert exact_match(row["solution"], row["answer"]) == 1.0


def test_splits_are_deterministic_and_disjoint():
    a = arith_splits(seed=3, num_train=300, num_val=50, num_test=50)
    b = arith_splits(seed=3, num_train=300, num_val=50, num_test=50)
    c = arith_splits(seed=4, num_train=300, num_val=50, num_test=50)
    assert a["train"]["question"] == b["train"]["question"]
    assert a["test"]["question"] != c["test"]["question"]
    train, val, test = (set(a[s]["question"]) for s in ("train", "validation", "test"))
    assert len(train) == 300 and len(val) == 50 and len(test) == 50
    assert not train & val and not train & test and not val & test


def test_digits_bound_the_first_operand():
    rows = arith_splits(seed=0, num_train=200, num_val=1, num_test=1, digits=1, steps=1)["train"]
    assert all(int(s.split("+")[0].split("-")[0]) <= 9 for s in rows["solution"])


def test_bad_knobs_fail_clearly():
    with pytest.raises(ValueError, match="operations"):
        arith_splits(operations="+/")
    with pytest.raises(ValueError, match="digits and steps"):
        arith_splits(steps=0)
    # 20 names x 18 items x 9 values x 2 factors = 6480 distinct one-step "*" problems.
    with pytest.raises(ValueError, match=r"ran out of distinct problems after 64[0-8]\d"):
        arith_splits(num_train=7000, digits=1, steps=1, operations="*")


@pytest.mark.parametrize("wrong_steps", [1, 2, 3])
def test_inject_errors_miscomputes_exactly_k_steps(wrong_steps):
    rng = random.Random(wrong_steps)
    for _ in range(100):
        row = make_problem(rng, 1, 3, "+-*")
        corrupted = inject_errors(rng, row["solution"], wrong_steps)
        *equations, final = corrupted.split("\n")
        wrong, value = 0, None
        for equation in equations:
            a, op, b, result = re.match(r"^(-?\d+)([+\-*])(\d+)=(-?\d+)$", equation).groups()
            assert value is None or int(a) == value  # each step starts from the last result
            wrong += {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op] != int(result)
            value = int(result)
        assert wrong == wrong_steps
        assert final == f"#### {value}" and exact_match(corrupted, row["answer"]) == 0.0


@pytest.mark.parametrize("batch_format", ["sft", "pairs", "groups"])
def test_datamodule_builds_each_format(tokenizer, batch_format):
    dm = ArithDataModule(tokenizer, batch_format=batch_format, num_train=40, num_val=4, num_test=4, steps=3,
                         group_size=5, batch_size=8, micro_batch_size=3)  # fmt: skip
    dm.setup()
    micro, *rest = next(iter(dm.train_dataloader()))
    assert len(rest) == 2  # 8 rows in micro-batches of 3, 3, 2
    rows = {"sft": 3, "pairs": 6, "groups": 15}[batch_format]  # sequences in the first micro-batch
    assert micro.num_responses == rows and micro.num_prompts == 3
    if batch_format == "groups":
        assert micro.prompt_index.tolist() == [0] * 5 + [1] * 5 + [2] * 5
        assert micro.correct.tolist()[:5] == [1, 0, 0, 0, 0] and micro.rank[0] == 0
        assert all(1 <= r <= 3 for r in micro.rank.tolist()[1:5])
    if batch_format == "pairs":
        raw = dm.build_splits()["train"][0]
        assert raw["chosen"] != raw["rejected"] and raw["chosen"].split("\n")[0] != "#"
    prompts = next(iter(dm.val_dataloader()))
    assert prompts["prompt_ids"].shape[0] == 4 and len(prompts["answer"]) == 4


def test_first_step_pair_cuts_at_the_first_wrong_step():
    chosen, rejected = "2+3=5\n5+4=9\n9-1=8\n#### 8", "2+3=5\n5+4=10\n10-1=9\n#### 9"
    pair = first_step_pair("Q\n", chosen, rejected)
    assert pair == {"prompt": "Q\n2+3=5\n", "chosen": "5+4=9\n", "rejected": "5+4=10\n", "partial": True}
    whole = first_step_pair("Q\n", "#### 8", "#### 9")  # the step ends both chains: eos stays
    assert whole == {"prompt": "Q\n", "chosen": "#### 8", "rejected": "#### 9", "partial": False}
    with pytest.raises(ValueError, match="differs"):
        first_step_pair("Q\n", chosen, chosen)


@pytest.mark.parametrize("batch_format", ["pairs", "unpaired"])
def test_step_pairs_hold_the_first_wrong_step_without_eos(tokenizer, batch_format):
    """pair_unit=step: every row is one step after the correct steps before it, and no eos ends it
    (the answer goes on); the held-out prompts are the questions as with whole chains."""
    kw = dict(num_train=40, num_val=4, num_test=4, batch_size=8)
    whole = ArithDataModule(tokenizer, batch_format=batch_format, **kw)
    step = ArithDataModule(tokenizer, batch_format=batch_format, pair_unit="step", **kw)
    for a, b in zip(whole.build_splits()["train"], step.build_splits()["train"], strict=True):
        full = a.get("chosen", a.get("completion"))
        part = b.get("chosen", b.get("completion"))
        assert b["prompt"].startswith(a["prompt"]) and b["partial"]
        assert full.startswith(b["prompt"][len(a["prompt"]) :] + part)  # the correct prefix, then the step
        assert part.count("\n") == 1 and part.endswith("\n")
    step.setup()
    key = "chosen_ids" if batch_format == "pairs" else "input_ids"
    row = step.train_dataloader().dataset[0]
    ids = row[key]
    assert tokenizer.eos_token_id not in ids
    assert tokenizer.decode(ids[row["prompt_len"] :]).count("\n") == 1
    whole.setup()
    assert tokenizer.eos_token_id in whole.train_dataloader().dataset[0][key]
    with pytest.raises(ValueError, match="pair_unit"):
        ArithDataModule(tokenizer, pair_unit="token")


def test_group_size_must_allow_a_negative(tokenizer):
    with pytest.raises(ValueError, match="group_size"):
        ArithDataModule(tokenizer, group_size=1)

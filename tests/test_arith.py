import random

import pytest

from lit_align.data.arith import arith_splits, make_problem
from lit_align.rewards.math import exact_match


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

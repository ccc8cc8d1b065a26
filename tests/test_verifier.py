import pytest

from lit_align.data.answers import exact_match, extract_answer, normalize_number


@pytest.mark.parametrize(
    "completion,expected",
    [
        ("3+4=7\n7-2=5\n#### 5", "5"),
        ("#### 1,000", "1000"),
        ("#### $12.50", "12.5"),
        ("#### 7.00", "7"),
        ("#### -3", "-3"),
        ("so the answer is 42.", "42"),
        ("3+4=7 then 7-2=5", "5"),  # no #### line: the last number
        ("#### 8\nextra 9", "8"),  # the #### line wins over later numbers
        ("no numbers here", None),
        ("", None),
        ("####", None),
    ],
)
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


@pytest.mark.parametrize(
    "completion,answer,score",
    [
        ("1+1=2\n#### 2", "2", 1.0),
        ("#### 3", "2", 0.0),
        ("", "2", 0.0),  # an empty completion is wrong, not unscorable
        ("#### 1000", "1,000", 1.0),
        ("#### 2", "n/a", None),  # a gold answer without a number cannot be scored
    ],
)
def test_exact_match(completion, answer, score):
    assert exact_match(completion, answer) == score


def test_normalize_number():
    assert normalize_number("$1,234.500") == "1234.5"
    assert normalize_number("-0.0") == "0"

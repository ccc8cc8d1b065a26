import math
import re

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from lit_align.rewards.base import score
from lit_align.rewards.composite import CompositeReward, FormatReward, StepReward
from lit_align.rewards.math import MathReward
from lit_align.rewards.model import ModelReward
from lit_align.rollout.buffer import rows_from_samples


@pytest.mark.parametrize(
    "completion,gold,expected",
    [
        ("3+4=7\n7-2=5\n#### 5", "5", 1.0),
        ("#### 1,000", "1000", 1.0),  # thousands separator
        ("#### 1000", "1,000", 1.0),
        ("so the total is $5.00", "5", 1.0),  # currency and trailing zeros
        ("the answer is 0.75", "3/4", 1.0),  # fraction vs decimal
        ("We get \\boxed{\\frac{1}{2}}.", "0.5", 1.0),  # LaTeX
        ("answer: 2*6", "12", 1.0),  # a simple expression
        ("#### 8\nthen 9 more words", "8", 1.0),  # the #### line beats later numbers
        ("#### 8\nthen 9 more words", "9", 0.0),
        ("#### -3", "-3", 1.0),
        ("#### 7", "8", 0.0),
        ("", "5", 0.0),  # empty: scored, wrong
        ("no numbers here", "5", 0.0),
        ("#### 5", "n/a", None),  # gold cannot be parsed: unscorable
        ("#### 5", None, None),
    ],
)
def test_math_reward_table(completion, gold, expected):
    assert MathReward()(["q"], [completion], answer=[gold]) == [expected]


def test_score_turns_nan_into_none_and_checks_lengths():
    assert score(lambda p, c, **_: [1.0, float("nan")], ["a", "b"], ["x", "y"]) == [1.0, None]
    with pytest.raises(RuntimeError, match="returned 1 scores for 2 samples"):
        score(lambda p, c, **_: [1.0], ["a", "b"], ["x", "y"])


def test_a_failing_reward_is_named_with_its_sample():
    def picky(prompts, completions, **_):
        return [1.0 / len(c) for c in completions]  # an empty completion divides by zero

    with pytest.raises(RuntimeError, match=r"reward 'picky' failed on sample 2 \(completion ''\)"):
        score(picky, ["p"] * 3, ["ab", "c", ""])


@pytest.mark.parametrize(
    "bad,problem",
    [("1.0", "is not a number: '1.0'"), ([1.0], "is not a number: [1.0]"), (float("inf"), "is infinite: inf"),
     (float("-inf"), "is infinite: -inf"), (torch.ones(2), "is not a number: tensor([1., 1.])")],
)  # fmt: skip
def test_a_score_that_is_not_a_finite_number_is_named_with_its_sample(bad, problem):
    def sloppy(prompts, completions, **_):
        return [0.5, bad, 1.0]

    message = f"reward 'sloppy' gave sample 1 (completion 'the second one') a score that {problem}"
    with pytest.raises(RuntimeError, match=re.escape(message)):
        score(sloppy, ["p"] * 3, ["first", "the second one", "third"])
    # Numbers of any kind are floats; NaN, like None, is unscorable.
    scores = [1, torch.tensor(0.5), np.float32(0.25), np.float64("nan"), None]
    assert score(lambda p, c, **_: scores, ["p"] * 5, ["c"] * 5) == [1.0, 0.5, 0.25, None, None]


def test_composite_weights_and_unscorable_parts():
    reward = CompositeReward({"math": MathReward(), "format": FormatReward()}, {"math": 1.0, "format": 0.2})
    completions = ["1+1=2\n#### 2", "the answer is 2", "#### 3", "#### 2"]
    assert reward(["q"] * 4, completions, answer=["2", "2", "2", None]) == [1.2, 1.0, 0.2, None]
    with pytest.raises(ValueError, match="weights must name exactly"):
        CompositeReward({"math": MathReward()}, {"format": 1.0})


def test_step_reward_is_the_share_of_equations_that_hold():
    completions = [
        "3+4=7\n7-2=5\n5*2=10\n#### 10",  # 3 of 3
        "3+4=8\n8-2=6\n6*2=12\n#### 12",  # the first step slips, the rest follow from 8: 2 of 3
        "3+4=8\n8-2=7\n7*2=15\n#### 15",  # 0 of 3
        " 12 - 5 = 7 \nso 7\n#### 7",  # spaces are allowed; prose is not a step: 1 of 1
        "#### 10",  # no step
    ]
    assert StepReward()(["q"] * 5, completions) == [1.0, 2 / 3, 0.0, 1.0, 0.0]


def test_graded_reward_ranks_right_answers_then_fewer_wrong_steps():
    """reward=graded as shipped: correct + 0.5 × steps; the AFT groups rank by it."""
    reward = CompositeReward({"correct": MathReward(), "steps": StepReward()}, {"correct": 1.0, "steps": 0.5})
    completions = [
        "3+4=7\n7-2=5\n5*2=10\n#### 10",  # right, every step holds: 1.5
        "3+4=8\n8-2=6\n6*2=12\n#### 12",  # wrong answer, 1 slip: 1/3
        "3+4=8\n8-2=7\n7*2=15\n#### 15",  # wrong answer, 3 slips: 0.0
        "3+4=7\n7-2=5\n5*3=15\n#### 15",  # wrong operand but every step holds: 0.5
    ]
    scores = reward(["q"] * 4, completions, answer=["10"] * 4)
    assert scores == pytest.approx([1.5, 1 / 3, 0.0, 0.5])
    (group,) = rows_from_samples("groups", [[1]], [[3], [4], [5], [6]], scores, num_samples=4, threshold=1.0)
    assert list(zip(group["correct"], group["rank"], strict=True)) == [(True, 0), (False, 2), (False, 3), (False, 1)]


def test_model_reward_scores_encoded_prompt_plus_completion_in_batches(tokenizer, tmp_path):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=0)  # fmt: skip
    model = LlamaForSequenceClassification(config).eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    prompts, completions = ["2+2=?\n"] * 3, ["#### 4", "#### 5", "a much longer wrong answer: #### 7"]
    one, four = ModelReward(str(tmp_path), batch_size=1), ModelReward(str(tmp_path), batch_size=4)
    scores = one(prompts, completions)
    assert len(scores) == 3 and all(math.isfinite(s) for s in scores) and len(set(scores)) == 3
    assert four(prompts, completions) == pytest.approx(scores, abs=1e-5)  # padding does not change a score
    # Encoded as training pairs are: bos + prompt + completion + eos, so an objective=rm model
    # scores exactly the sequences it was trained on.
    ids = [tokenizer.bos_token_id, *tokenizer(prompts[1] + completions[1])["input_ids"], tokenizer.eos_token_id]
    with torch.no_grad():
        direct = model(input_ids=torch.tensor([ids])).logits[0, 0].item()
    assert scores[1] == pytest.approx(direct, abs=1e-5)

import pytest

from lit_align.callbacks.best_of_n import BestOfN, majority
from lit_align.train import train
from tests.conftest import make_cfg


def test_majority_vote():
    assert majority(["5", "7", "5", None]) == 0
    assert majority([None, "7", "5", "5", "7"]) == 1  # a tie goes to the answer seen first
    assert majority([None, None]) is None


def test_best_of_n_in_a_short_cli_run(tmp_path):
    summary = train(make_cfg(tmp_path, "callbacks=best_of_n",
                             "callbacks.best_of_n.num_samples=4", "trainer.max_steps=8"))  # fmt: skip
    final = summary["final"]
    assert {"eval/greedy_accuracy", "eval/pass@4", "eval/maj@4", "eval/bon@4"} <= set(final)
    assert final["eval/greedy_accuracy"] == final["test/accuracy"]  # the same greedy decoding
    for key in ("eval/pass@4", "eval/maj@4", "eval/bon@4"):
        assert 0.0 <= final[key] <= final["eval/pass@4"] <= 1.0


def test_reward_scorer_picks_the_best_rewarded_sample(tmp_path):
    from lit_align.rewards.math import MathReward

    callback = BestOfN(num_samples=3, scorer=MathReward())
    assert callback.scorer.name == "math"
    with pytest.raises(ValueError, match="scorer must be"):
        BestOfN(scorer="reward")

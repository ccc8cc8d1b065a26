from types import SimpleNamespace

import pytest

from lit_align.callbacks.best_of_n import BestOfN, majority
from lit_align.data.answers import exact_match
from lit_align.data.collate import pad
from lit_align.data.datamodule import AlignDataModule
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


def test_max_steps_0_evaluates_an_exported_model_without_training(tmp_path):
    """Best-of-N at the end of a run that did not measure it: its exported model, evaluated only.
    Nothing trains, so the greedy test accuracy is the trained run's, the model is exported
    unchanged and no checkpoint is written."""
    trained = train(make_cfg(tmp_path / "run", "trainer.max_steps=8", "eval.before_train=false"))
    model = tmp_path / "run" / "model"
    summary = train(make_cfg(tmp_path / "eval", "trainer.max_steps=0", "eval.before_train=false", "model=hf",
                             f"model.name_or_path={model}", "callbacks=best_of_n",
                             "callbacks.best_of_n.num_samples=4"))  # fmt: skip
    assert summary["steps"] == 0
    assert summary["final"]["test/accuracy"] == trained["final"]["test/accuracy"]
    assert summary["final"]["val/accuracy"] == trained["final"]["val/accuracy"]
    assert summary["final"]["eval/greedy_accuracy"] == trained["final"]["test/accuracy"]
    assert {"eval/pass@4", "eval/maj@4", "eval/bon@4"} <= set(summary["final"])
    assert "train/loss" not in summary["final"]
    assert not (tmp_path / "eval" / "checkpoints" / "last.ckpt").exists()
    exported = (tmp_path / "eval" / "model" / "model.safetensors").read_bytes()
    assert exported == (model / "model.safetensors").read_bytes()


def test_max_steps_0_scores_no_training_pairs(tmp_path, monkeypatch):
    """An evaluation-only run trains on nothing, so a precomputed reference scores no pairs."""

    def refuse(self, score):
        raise AssertionError("evaluation only: no training pair needs a reference score")

    monkeypatch.setattr(AlignDataModule, "add_reference_logps", refuse)
    summary = train(make_cfg(tmp_path, "objective=dpo", "objective.precompute_ref=true", "trainer.max_steps=0"))
    assert summary["steps"] == 0


def test_reward_scorer_picks_the_best_rewarded_sample(tokenizer):
    """Two prompts × 3 samples with fixed completions: the scorer ranks prompt 0's correct sample
    first and prompt 1's wrong one first, so bon@3 is 1 of 2; pass@3 is 2 (each has a correct
    sample); maj@3 is 0 (prompt 0's answers all differ, the first wins; prompt 1's majority is
    wrong); greedy is 1 (the greedy completions given)."""
    completions = ["#### 1", "#### 5", "#### 2", "#### 7", "#### 3", "#### 3"]
    rewards = [0.1, 0.9, 0.2, 0.5, 0.1, 0.8]
    seen = {}

    def scorer(prompts, texts, answer):
        seen.update(prompts=prompts, texts=texts, answer=answer)
        return rewards

    callback = BestOfN(num_samples=3, scorer=scorer)
    callback.sampler = lambda *args, **kwargs: SimpleNamespace(completions=completions, logps=None)
    prompt_ids, prompt_mask = pad([[1, 5, 6], [1, 7]], tokenizer.pad_token_id, left=True)
    batch = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "answer": ["5", "7"]}
    module = SimpleNamespace(tokenizer=tokenizer, policy=None, shared_prefix=True)
    totals = callback._judge(module, exact_match, batch, greedy=["#### 5", "#### 1"])
    assert dict(totals) == {"prompts": 2, "greedy_accuracy": 1, "pass@3": 2, "maj@3": 0, "bon@3": 1}
    assert seen["texts"] == completions and seen["answer"] == ["5"] * 3 + ["7"] * 3
    with pytest.raises(ValueError, match="scorer must be"):
        BestOfN(scorer="reward")

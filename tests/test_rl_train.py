"""RLOO, PPO and reward modelling end to end: short runs of the shipped configs on the tiny
model and task, a trained reward model used by RLOO and best-of-N, and the config checks."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
from hydra.errors import InstantiationException
from transformers import AutoModelForSequenceClassification, DebertaConfig, DebertaForSequenceClassification

from lit_align.config import ConfigError
from lit_align.models.tiny import char_tokenizer
from lit_align.rewards.model import ModelReward
from lit_align.train import train
from tests.conftest import losses_by_step, make_cfg
from tests.test_online import _cli

# 4 prompts × 4 samples = 4 rollout rows (a prompt with its samples) = 2 steps of 2 prompts (8
# samples) per update epoch.
RL = ["init=none", "rollout.num_prompts=4", "rollout.num_samples=4", "rollout.log_samples=1", "data.batch_size=2"]


def _metric_column(run_dir, key):
    with (run_dir / "metrics.csv").open() as f:
        return [float(row[key]) for row in csv.DictReader(f) if row.get(key)]


def _refresh_steps(run_dir):
    return [json.loads(line)["step"] for line in (run_dir / "rollouts.jsonl").read_text().splitlines()]


def test_rloo_trains_update_epochs_on_each_rollout(tmp_path):
    summary = train(make_cfg(tmp_path, "objective=rloo", *RL, "rollout.every_n_epochs=2", "trainer.max_steps=6"))
    assert summary["objective"] == "rloo" and summary["steps"] == 6
    assert _refresh_steps(tmp_path) == [0, 4]  # a rollout, two passes of 2 steps over it, the next
    final = summary["final"]
    assert final["rollout/buffer_rows"] == 4 == summary["data"]["data/train_rows"]  # prompts, 4 samples each
    assert {"rollout/kl", "rollout/kl_coef", "rollout/frac_reward_zero_std", "rloo/kl", "rloo/clip_frac"} <= set(final)
    assert 0 <= final["rollout/frac_reward_zero_std"] <= 1


def test_rloo_in_one_on_policy_step_skips_the_scoring_forward_and_trains_the_same(tmp_path):
    """A rollout trained in one step by the policy that sampled it: the step's own forward gives
    the sampling policy's and the reference's log-probs (no scoring forward at sampling: no
    ``rollout/kl`` yet). Forcing the scoring forward (an adaptive KL whose β cannot move in two
    rollouts) gives the same samples and the same losses."""
    one_step = [*RL, "data.batch_size=4", "rollout.every_n_epochs=1", "trainer.max_steps=2"]
    in_step = train(make_cfg(tmp_path / "in_step", "objective=rloo", *one_step))
    scored = train(make_cfg(tmp_path / "scored", "objective=rloo", *one_step, "objective.kl.controller=adaptive",
                            "objective.kl.horizon=1000000000"))  # fmt: skip
    assert "rollout/kl" not in in_step["final"] and "rloo/kl" in in_step["final"]
    assert "rollout/kl" in scored["final"]
    assert _refresh_steps(tmp_path / "in_step") == _refresh_steps(tmp_path / "scored") == [0, 1]
    losses = [losses_by_step(tmp_path / run) for run in ("in_step", "scored")]
    assert losses[0].keys() == losses[1].keys() and len(losses[0]) == 2
    for step, loss in losses[0].items():
        assert loss == pytest.approx(losses[1][step], rel=1e-5, abs=1e-6), step


def test_ppo_logs_its_diagnostics_and_adapts_the_kl_coefficient(tmp_path):
    # horizon 16 = one rollout: a KL far under the target cuts β by 20% per rollout.
    summary = train(make_cfg(tmp_path, "objective=ppo", *RL, "rollout.every_n_epochs=1", "trainer.max_steps=4",
                             "objective.kl.controller=adaptive", "objective.kl.horizon=16"))  # fmt: skip
    final = summary["final"]
    for key in ("ppo/approx_kl", "ppo/clip_frac", "ppo/value_loss", "ppo/explained_var", "ppo/entropy",
                "rollout/kl", "rollout/reward_mean", "rollout/frac_reward_zero_std"):  # fmt: skip
        assert key in final, key
    assert _metric_column(tmp_path, "rollout/kl_coef") == pytest.approx([0.05, 0.04])


def test_ppo_with_a_separate_critic(tmp_path):
    summary = train(make_cfg(tmp_path, "objective=ppo", *RL, "objective.critic=separate", "trainer.max_steps=2"))
    assert summary["steps"] == 2 and "ppo/value_loss" in summary["final"]


def test_rl_from_an_sft_start(tmp_path):
    cache = f"init.cache_dir={tmp_path / 'cache'}"
    summary = train(make_cfg(tmp_path / "run", "objective=rloo", *RL[1:], "init.max_steps=4", cache,
                             "trainer.max_steps=2"))  # fmt: skip
    assert summary["init"]["stage"] == "sft" and not summary["init"]["reused"]


def test_reward_model_trains_exports_and_serves_rloo_and_best_of_n(tmp_path):
    rm = train(make_cfg(tmp_path / "rm", "objective=rm", "init=none", "trainer.max_steps=4"))
    assert rm["objective"] == "rm"
    assert {"val/rm/accuracy", "test/rm/accuracy", "test/loss"} <= set(rm["final"]) and "val/accuracy" not in rm[
        "final"
    ]
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm" / "model")
    assert model.config.num_labels == 1
    reward = ["reward=model", f"reward.name_or_path={tmp_path / 'rm' / 'model'}", "reward.device=cpu"]
    summary = train(make_cfg(tmp_path / "rloo", "objective=rloo", *RL, *reward, "trainer.max_steps=2",
                             "callbacks=best_of_n", "callbacks.best_of_n.num_samples=2",
                             "callbacks.best_of_n.scorer=${reward}"))  # fmt: skip
    rewards = [json.loads(line)["reward"] for line in (tmp_path / "rloo" / "rollouts.jsonl").read_text().splitlines()]
    assert rewards and all(r not in (0.0, 1.0) for r in rewards)  # a reward model's scores, not a verifier's
    assert summary["final"]["rollout/pass_rate"] == 0.0 or summary["final"]["rollout/reward_std"] > 0
    assert "eval/bon@2" in summary["final"]


def test_reward_model_from_a_hub_style_deberta(tmp_path):
    """`model=hf` with a DeBERTa sequence classifier saved locally, as a Hub one would be: it
    trains on the task's pairs and serves as `reward=model`."""
    tokenizer = char_tokenizer()
    config = DebertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, num_labels=1, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    DebertaForSequenceClassification(config).save_pretrained(tmp_path / "deberta")
    tokenizer.save_pretrained(tmp_path / "deberta")
    hub = ["model=hf", f"model.name_or_path={tmp_path / 'deberta'}", "data.num_train=64", "data.num_val=8"]
    # An encoder attends from the prompt to the response: no prompt can be computed once for two.
    with pytest.raises(ConfigError, match="DebertaForSequenceClassification takes no KV cache"):
        train(make_cfg(tmp_path / "refused", "objective=rm", "init=none", *hub, "data.num_test=8"))
    hub.append("model.shared_prefix=false")
    summary = train(make_cfg(tmp_path / "rm", "objective=rm", "init=none", *hub, "data.num_test=8"))
    assert "val/rm/accuracy" in summary["final"] and summary["steps"] == 6
    trained = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm" / "model")
    assert isinstance(trained, DebertaForSequenceClassification)
    scores = ModelReward(str(tmp_path / "rm" / "model"))(["2+2=?\n"] * 2, ["#### 4", "#### 5"])
    assert len(scores) == 2 and scores[0] != scores[1]


def test_policy_gradient_needs_online_rollouts(tmp_path):
    with pytest.raises(ValueError, match="online sampling"):
        train(make_cfg(tmp_path / "a", "objective=rloo", "init=none", "rollout=none"))
    with pytest.raises(ValueError, match="every_n_epochs"):
        train(make_cfg(tmp_path / "b", "objective=ppo", "init=none", "rollout.every_n_epochs=null"))
    with pytest.raises(ValueError, match="samples from the policy itself"):
        train(make_cfg(tmp_path / "e", "objective=rloo", "init=none", "rollout.temperature=0.7"))
    with pytest.raises(InstantiationException, match=r"kl\.placement must be reward"):
        train(make_cfg(tmp_path / "c", "objective=ppo", "init=none", "objective.kl.placement=loss"))
    args = ["objective=ppo", "init=none", "objective.kl.placement=loss", f"hydra.run.dir={tmp_path / 'd'}"]
    out = subprocess.run([sys.executable, "-m", "lit_align", *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 1  # from the command line: one line, no traceback
    message = "PPO puts the KL penalty in the per-token reward: kl.placement must be reward"
    assert out.stderr.strip() == f"lit_align: {message}"


@pytest.mark.distributed
def test_ddp_rloo_and_ppo(tmp_path):
    for objective in ("rloo", "ppo"):
        _cli(f"objective={objective}", *RL, "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp",
             "trainer.max_steps=2", f"hydra.run.dir={tmp_path / objective}")  # fmt: skip
        summary = json.loads((tmp_path / objective / "summary.json").read_text())
        assert summary["final"]["rollout/buffer_rows"] == 4  # prompts, 4 samples each (both ranks' shards)
        assert summary["steps"] == 2

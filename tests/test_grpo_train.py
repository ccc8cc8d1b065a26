"""The GRPO family end to end: each preset for a few steps on the tiny model and task, GRPO on
the GSM8K-schema fixture from the command line, DAPO's dynamic sampling and overlong penalty."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from lit_align.callbacks.online_sampling import OnlineSampling
from lit_align.rewards.overlong import OverlongPenalty, overlong_penalty
from lit_align.rollout.dynamic_sampling import informative_groups, select_groups
from lit_align.train import train
from tests.conftest import FAST, SMALL_MODEL, make_cfg
from tests.test_gsm8k import _fixture

# 4 prompts × 4 samples, all in one on-policy step (2 steps for gspo's batch of 2 prompts).
RL = ["init=none", "rollout.num_prompts=4", "rollout.num_samples=4", "rollout.log_samples=1", "data.batch_size=4",
      "trainer.max_steps=2", "eval.before_train=false"]  # fmt: skip


@pytest.mark.parametrize("experiment", ["grpo", "dr_grpo", "dapo", "gspo"])
def test_each_preset_trains(tmp_path, experiment):
    extra = {"gspo": ["data.batch_size=2"], "dapo": ["rollout.max_refill_rounds=1"]}.get(experiment, [])
    preset = "objective=grpo" if experiment == "grpo" else f"experiment={experiment}"  # grpo: the objective's own
    summary = train(make_cfg(tmp_path, preset, *RL, *extra))
    final = summary["final"]
    assert summary["objective"] == "grpo" and summary["steps"] == 2
    assert {"grpo/kl", "grpo/clip_frac_low", "grpo/clip_frac_high", "rollout/frac_reward_zero_std"} <= set(final)
    assert all(torch.isfinite(torch.tensor(v)) for v in final.values())
    if experiment == "dapo":
        assert {"rollout/filtered_groups", "rollout/refill_rounds"} <= set(final)
        assert 0 <= final["rollout/refill_rounds"] <= 1


@pytest.mark.slow  # a CLI subprocess run of 15-35 s: the default suite keeps under 10 minutes
def test_grpo_on_the_gsm8k_fixture_from_the_command_line(tmp_path):
    data = ["data=gsm8k", f"data.source={_fixture(tmp_path)}", "data.num_val=2", "data.num_test=2",
            "data.eval_batch_size=4", "eval.before_train=false"]  # fmt: skip
    rl = ["objective=grpo", "init=none", "rollout.num_prompts=2", "rollout.num_samples=2", "data.batch_size=2",
          "trainer.max_steps=2", f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    out = subprocess.run([sys.executable, "-m", "lit_align", *FAST, *SMALL_MODEL, *data, *rl],
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "online sampling #2: 2 prompts × 2" in out.stdout + out.stderr
    assert (tmp_path / "run" / "summary.json").exists()


def test_informative_groups_and_selection():
    """k = 2: [1, 0] differs; [1, 1] ties; [1, None] has one scorable sample; [0, 0.5] differs."""
    rewards = [1.0, 0.0, 1.0, 1.0, 1.0, None, 0.0, 0.5]
    keep = informative_groups(rewards, 2)
    assert keep == [True, False, False, True]
    samples = {"prompts": ["a", "b", "c", "d"], "rewards": rewards, "lengths": [1, 2, 3, 4, 5, 6, 7, 8]}
    assert select_groups(samples, keep, 2) == {"prompts": ["a", "d"], "rewards": [1.0, 0.0, 0.0, 0.5],
                                               "lengths": [1, 2, 7, 8]}  # fmt: skip


def test_dynamic_sampling_tops_up_with_fresh_prompts():
    """3 prompts per rollout, k = 2; even prompt indices score [1, 0], odd ones tie [1, 1]. The
    first draw keeps the even ones of its 3; each top-up draws as many prompts as are missing,
    fresh from the cursor, until 3 informative prompts are kept (the surplus dropped), or the
    rounds run out."""
    draws = []

    def draw(trainer, pl_module, chosen):
        draws.append(list(chosen))
        rewards = [r for p in chosen for r in ([1.0, 0.0] if p % 2 == 0 else [1.0, 1.0])]
        return {"prompts": list(chosen), "rewards": rewards, "lengths": [1] * len(rewards)}

    sampling = OnlineSampling(reward=None, num_samples=2, num_prompts=3, dynamic_sampling=True, max_refill_rounds=5)
    sampling.seed = 0
    sampling._prompts = list(range(10))
    sampling._draw = draw
    module = SimpleNamespace(policy=torch.nn.Linear(1, 1))
    chosen = sampling._next_prompts(10)
    kept, stats = sampling._top_up(SimpleNamespace(world_size=1), module, draw(None, None, chosen), len(chosen))
    assert len(kept["prompts"]) == 3 and all(p % 2 == 0 for p in kept["prompts"])
    drawn = [p for d in draws for p in d]
    assert len(set(drawn)) == len(drawn)  # every top-up draws fresh prompts
    assert stats["rollout/filtered_groups"] == sum(p % 2 for p in drawn)
    assert stats["rollout/refill_rounds"] == len(draws) - 1 >= 1
    assert [p for p in stats["drawn"]["prompts"]] == drawn  # the metrics see every sample drawn
    sampling.max_refill_rounds, draws[:] = 0, []  # no top-up allowed: train on what the first draw kept
    sampling._round = 0
    kept, stats = sampling._top_up(SimpleNamespace(world_size=1), module, draw(None, None, [1, 3, 4]), 3)
    assert kept["prompts"] == [4] and stats["rollout/refill_rounds"] == 0


def test_overlong_penalty_by_hand():
    """L_max = 10, L_cache = 4: up to 6 tokens 0; 8 tokens (6 − 8)/4 = −0.5; 10 tokens −1; over: −1."""
    assert [overlong_penalty(n, 10, 4) for n in (3, 6, 8, 10, 11)] == [0.0, 0.0, -0.5, -1.0, -1.0]
    base = lambda prompts, completions, **_: [1.0, None, 0.0]  # noqa: E731
    shaped = OverlongPenalty(base, max_length=10, cache_length=4)
    assert shaped(["p"] * 3, ["a", "b", "c"], completion_length=[8, 10, 7]) == [0.5, None, -0.25]
    with pytest.raises(ValueError, match="completion_length"):
        shaped(["p"], ["a"])

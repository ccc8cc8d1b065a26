"""Online sampling: scored samples → training rows, rollout statistics, and the callback inside
short runs (the AFT pipeline with its cached SFT stage, iterative re-sampling, online DPO and
rejection-sampling SFT)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from lit_align.callbacks.online_sampling import OnlineSampling
from lit_align.rollout.buffer import rollout_metrics, rows_from_samples
from lit_align.rollout.sampler import Sampler
from lit_align.train import train
from tests.conftest import FAST, SMALL_DATA, SMALL_MODEL, make_cfg


class LengthReward:
    """A graded reward for tests: the completion's length in characters."""

    def __call__(self, prompts, completions, **_):
        return [float(len(c)) for c in completions]


PROMPTS = ["p0", "p1", "p2"]
TEXTS = ["a", "b", "c", "d", "e", "f"]  # two samples per prompt


def test_groups_rank_rewards_and_drop_unscorable():
    rows = rows_from_samples("groups", PROMPTS, TEXTS, [1.0, 0.0, None, None, 0.5, 1.0], num_samples=2)
    assert [r["prompt"] for r in rows] == ["p0", "p2"]  # p1: nothing scorable
    assert rows[0]["responses"] == [
        {"text": "a", "correct": True, "rank": 0, "reference": False},
        {"text": "b", "correct": False, "rank": 1, "reference": False},
    ]
    assert [(r["text"], r["rank"], r["correct"]) for r in rows[1]["responses"]] == [("e", 1, False), ("f", 0, True)]
    graded = rows_from_samples("groups", ["q"], ["x", "y", "z"], [0.2, 0.9, 0.2], num_samples=3, threshold=0.5)
    assert [(r["rank"], r["correct"]) for r in graded[0]["responses"]] == [(1, False), (0, True), (1, False)]


def test_pairs_take_best_and_worst_and_skip_ties():
    rows = rows_from_samples("pairs", PROMPTS, TEXTS, [0.0, 1.0, 1.0, 1.0, None, 0.0], num_samples=2)
    assert rows == [{"prompt": "p0", "chosen": "b", "rejected": "a"}]  # p1 ties, p2 has one scorable sample
    three = rows_from_samples("pairs", ["q"], ["x", "y", "z"], [0.5, 2.0, -1.0], num_samples=3)
    assert three == [{"prompt": "q", "chosen": "y", "rejected": "z"}]


def test_sft_keeps_passing_samples_only():
    rows = rows_from_samples("sft", PROMPTS, TEXTS, [1.0, 0.0, None, 1.0, 1.0, 1.0], num_samples=2)
    assert rows == [{"prompt": p, "response": t} for p, t in [("p0", "a"), ("p1", "d"), ("p2", "e"), ("p2", "f")]]
    with pytest.raises(ValueError, match="3 prompts × 2 samples"):
        rows_from_samples("sft", PROMPTS, TEXTS[:5], [1.0] * 5, num_samples=2)


def test_references_join_groups_and_sft_rows():
    rewards = [0.0, 0.0, None, None, 1.0, 0.0]
    groups = rows_from_samples("groups", PROMPTS, TEXTS, rewards, num_samples=2, references=["r0", "r1", "r2"])
    assert [len(g["responses"]) for g in groups] == [3, 1, 3]  # p1 keeps its reference alone
    assert groups[0]["responses"][-1] == {"text": "r0", "correct": True, "rank": 0, "reference": True}
    sft = rows_from_samples("sft", PROMPTS, TEXTS, rewards, num_samples=2, references=["r0", "r1", "r2"])
    assert [r["response"] for r in sft] == ["r0", "r1", "r2", "e"]
    pairs = rows_from_samples("pairs", PROMPTS, TEXTS, rewards, num_samples=2, references=["r0", "r1", "r2"])
    assert pairs == [{"prompt": "p2", "chosen": "e", "rejected": "f"}]


def test_rollout_metrics_by_hand():
    # Scorable rewards 1, 0, 1, 0.5: mean 0.625, population variance (0.140625·2 + 0.390625 + 0.015625)/4.
    metrics = rollout_metrics([1.0, 0.0, None, 1.0, 0.5], [10, 20, 30, 40, 50], [False, True, False, False, True])
    assert metrics["rollout/reward_mean"] == pytest.approx(0.625)
    assert metrics["rollout/reward_std"] == pytest.approx(math.sqrt(0.171875))
    assert metrics["rollout/pass_rate"] == 0.5  # 2 of 4 scorable samples reach 1.0
    assert metrics["rollout/unscorable_frac"] == 0.2
    assert metrics["rollout/completion_len"] == 30 and metrics["rollout/truncated_frac"] == 0.4
    assert math.isnan(rollout_metrics([None], [3], [True])["rollout/reward_mean"])


def test_sampler_seed_per_call_and_without_logps(tokenizer, tiny_model):
    sampler = Sampler(num_samples=3, max_new_tokens=8, seed=5)
    ids = torch.tensor([[1, 40, 41]])
    mask = torch.ones_like(ids)
    default = sampler(tiny_model, tokenizer, ids, mask)
    again = sampler(tiny_model, tokenizer, ids, mask, seed=5, with_logps=False)
    other = sampler(tiny_model, tokenizer, ids, mask, seed=6)
    assert torch.equal(default.input_ids, again.input_ids) and again.logps is None
    assert not torch.equal(default.input_ids, other.input_ids)


def test_prompt_order_continues_across_refreshes_and_resumes():
    callback = OnlineSampling(LengthReward(), num_prompts=3, seed=1)
    first, second = callback._next_prompts(5), callback._next_prompts(5)
    resumed = OnlineSampling(LengthReward(), num_prompts=3, seed=1)
    resumed.load_state_dict({"refreshes": 1, "cursor": 3})
    assert set(first) | set(second[:2]) == set(range(5)) and second[2] == first[0]  # wraps after 5
    assert resumed._next_prompts(5) == second
    with pytest.raises(ValueError, match="num_prompts"):
        OnlineSampling(LengthReward(), num_prompts=0)


# 16 prompts × 3 samples per refresh.
ROLLOUT = ["rollout.num_prompts=16", "rollout.num_samples=3"]
# Online AFT from the configured model, without best-of-N.
ONLINE_AFT = ["objective=aft", "init=none", "callbacks=default", *ROLLOUT]
# The pipeline: a 6-step SFT stage, online AFT, best-of-4 evaluation.
PIPELINE = ["objective=aft", "init.max_steps=6", *ROLLOUT, "callbacks.best_of_n.num_samples=4"]


def test_aft_pipeline_caches_its_sft_stage(tmp_path):
    cache = f"init.cache_dir={tmp_path / 'cache'}"
    summary = train(make_cfg(tmp_path / "a", *PIPELINE, cache))
    init = summary["init"]
    assert init["stage"] == "sft" and not init["reused"] and init["model"].startswith(str(tmp_path / "cache"))
    assert "val/accuracy" in summary["start"] and "val/accuracy" in init["final"]
    final = summary["final"]
    assert {"rollout/reward_mean", "rollout/pass_rate", "rollout/truncated_frac", "aft/pair_accuracy"} <= set(final)
    assert final["eval/pass@4"] >= final["eval/greedy_accuracy"]
    assert summary["data"]["data/train_rows"] == final["rollout/buffer_rows"] == 16  # every group scorable
    lines = [json.loads(line) for line in (tmp_path / "a" / "rollouts.jsonl").read_text().splitlines()]
    assert len(lines) == 8 and set(lines[0]) == {"step", "prompt", "completion", "reward"}

    other = train(make_cfg(tmp_path / "c", *PIPELINE, cache, "init.lr=1e-3", "trainer.max_steps=1"))
    assert not other["init"]["reused"] and other["init"]["model"] != init["model"]  # new settings, new stage


def _cli(*overrides: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "lit_align", *FAST, *SMALL_MODEL, *SMALL_DATA, *overrides],
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.mark.slow  # a CLI subprocess run of 15-35 s: the default suite keeps under 10 minutes
def test_aft_pipeline_from_the_command_line_reuses_its_sft_stage(tmp_path):
    cache = f"init.cache_dir={tmp_path / 'cache'}"
    first = _cli(*PIPELINE, cache, f"hydra.run.dir={tmp_path / 'a'}")
    printed = first.stdout + first.stderr
    assert "init: stage 1, SFT for 6 steps" in printed and "online sampling #1: 16 prompts × 3" in printed
    second = _cli(*PIPELINE, cache, f"hydra.run.dir={tmp_path / 'b'}")
    assert "init: reusing the SFT model in" in second.stdout + second.stderr
    a, b = (json.loads((tmp_path / d / "summary.json").read_text()) for d in "ab")
    assert b["init"]["reused"] and b["init"]["model"] == a["init"]["model"]
    assert b["start"] == a["start"] and b["final"]["eval/pass@4"] >= b["final"]["eval/greedy_accuracy"]


@pytest.mark.distributed
def test_ddp_ranks_sample_their_own_shards_and_share_the_buffer(tmp_path):
    _cli(*ONLINE_AFT, "trainer.accelerator=cpu", "trainer.devices=2",
         "trainer.strategy=ddp", "trainer.max_steps=2", f"hydra.run.dir={tmp_path}")  # fmt: skip
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["final"]["rollout/buffer_rows"] == 16 and summary["data"]["data/train_rows"] == 16


def test_starting_model_skips_the_sft_stage(tmp_path):
    start = train(make_cfg(tmp_path / "sft", "trainer.max_steps=2", "eval.before_train=false"))
    assert start["init"] is None
    summary = train(make_cfg(tmp_path / "aft", *PIPELINE, f"model.name_or_path={tmp_path / 'sft' / 'model'}",
                             f"init.cache_dir={tmp_path / 'cache'}", "trainer.max_steps=2"))  # fmt: skip
    assert summary["init"] is None and not (tmp_path / "cache").exists()
    assert summary["start"]["val/accuracy"] == start["final"]["val/accuracy"]


def test_iterative_resampling_refreshes_every_epoch(tmp_path):
    # 8 prompts per refresh = one step of 8 groups: a new buffer before every step.
    train(make_cfg(tmp_path, *ONLINE_AFT, "rollout.num_prompts=8", "rollout.every_n_epochs=1",
                   "rollout.log_samples=1", "trainer.max_steps=4"))  # fmt: skip
    lines = [json.loads(line) for line in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 1, 2, 3]
    assert len({line["prompt"] for line in lines}) == 4  # each refresh takes the next prompts


@pytest.mark.parametrize(
    "overrides,metric",
    [
        (["objective=dpo", "init=none"], "rewards/accuracies"),  # online DPO: best vs worst sample
        (["objective=sft", "rollout.threshold=8"], "train/loss"),  # rejection sampling: samples of 8+ chars
        # SimPO and ORPO take the same best-vs-worst pairs (KTO is refused: tests/test_config.py).
        pytest.param(["objective=simpo", "init=none"], "rewards/accuracies", marks=pytest.mark.slow),
        pytest.param(["objective=orpo", "init=none"], "rewards/accuracies", marks=pytest.mark.slow),
    ],
)
def test_online_dpo_and_rejection_sampling(tmp_path, overrides, metric):
    summary = train(make_cfg(tmp_path, *overrides, "rollout=online", "rollout.num_prompts=12",
                             "rollout.num_samples=3", "reward._target_=tests.test_online.LengthReward",
                             "trainer.max_steps=3"))  # fmt: skip
    assert metric in summary["final"] and summary["data"]["data/train_rows"] > 0


def test_prompt_set_smaller_than_the_batch(tmp_path):
    summary = train(make_cfg(tmp_path, *ONLINE_AFT, "data.num_train=3", "rollout.num_prompts=null",
                             "trainer.max_steps=2"))  # fmt: skip
    assert summary["steps"] == 2 and summary["data"]["data/train_rows"] == 3  # one step of 3 groups per epoch


def test_online_sampling_refuses_a_precomputed_reference(tmp_path):
    with pytest.raises(ValueError, match="precompute_ref"):
        train(make_cfg(tmp_path, "objective=dpo", "objective.precompute_ref=true", "rollout=online"))

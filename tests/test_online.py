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
from lit_align.rollout.draw import passes_warning, sample_and_score
from lit_align.rollout.sampler import Sampler
from lit_align.train import train
from tests.conftest import FAST, SMALL_DATA, SMALL_MODEL, make_cfg


class LengthReward:
    """A graded reward for tests: the completion's length in characters."""

    def __call__(self, prompts, completions, **_):
        return [float(len(c)) for c in completions]


PROMPTS = [[1, 5], [1, 6], [1, 7]]  # prompt ids as sampled (bos 1)
SAMPLES = [[10, 2], [11, 2], [12, 2], [13, 2], [14, 2], [15]]  # two samples per prompt; the last cut before eos


def test_groups_rank_rewards_and_drop_unscorable():
    rows = rows_from_samples("groups", PROMPTS, SAMPLES, [1.0, 0.0, None, None, 0.5, 1.0], num_samples=2)
    assert len(rows) == 2  # p1: nothing scorable
    assert rows[0] == {"sequences": [[1, 5, 10, 2], [1, 5, 11, 2]], "prompt_len": 2, "correct": [True, False],
                       "rank": [0, 1], "reference": [False, False], "prompt_truncated": False,
                       "response_truncated": False}  # fmt: skip
    # The sample cut at the budget keeps its ids as sampled: no eos is added.
    assert rows[1]["sequences"] == [[1, 7, 14, 2], [1, 7, 15]]
    assert (rows[1]["rank"], rows[1]["correct"]) == ([1, 0], [False, True])
    graded = rows_from_samples("groups", [[1]], [[3], [4], [5]], [0.2, 0.9, 0.2], num_samples=3, threshold=0.5)
    assert (graded[0]["rank"], graded[0]["correct"]) == ([1, 0, 1], [False, True, False])


def test_pairs_take_best_and_worst_and_skip_ties():
    rows = rows_from_samples("pairs", PROMPTS, SAMPLES, [0.0, 1.0, 1.0, 1.0, None, 0.0], num_samples=2)
    # p1 ties, p2 has one scorable sample
    assert rows == [{"chosen_ids": [1, 5, 11, 2], "rejected_ids": [1, 5, 10, 2], "prompt_len": 2,
                     "prompt_truncated": False, "response_truncated": False}]  # fmt: skip
    three = rows_from_samples("pairs", [[1]], [[3], [4], [5]], [0.5, 2.0, -1.0], num_samples=3)
    assert (three[0]["chosen_ids"], three[0]["rejected_ids"]) == ([1, 4], [1, 5])


def test_sft_keeps_passing_samples_only():
    rows = rows_from_samples("sft", PROMPTS, SAMPLES, [1.0, 0.0, None, 1.0, 1.0, 1.0], num_samples=2)
    assert [r["input_ids"] for r in rows] == [[1, 5, 10, 2], [1, 6, 13, 2], [1, 7, 14, 2], [1, 7, 15]]
    assert {r["prompt_len"] for r in rows} == {2}
    with pytest.raises(ValueError, match="3 prompts × 2 samples"):
        rows_from_samples("sft", PROMPTS, SAMPLES[:5], [1.0] * 5, num_samples=2)
    with pytest.raises(NotImplementedError, match="online sampling makes no rollout rows"):
        rows_from_samples("rollout", PROMPTS, SAMPLES, [1.0] * 6, num_samples=2)
    with pytest.raises(ValueError, match="unknown batch format 'triples'"):
        rows_from_samples("triples", PROMPTS, SAMPLES, [1.0] * 6, num_samples=2)


def test_unpaired_rows_label_every_scorable_sample():
    """Online KTO: each scorable sample is a row, desirable when its reward reaches the threshold;
    references are not used; a mismatched response is assigned when the split is served."""
    rows = rows_from_samples("unpaired", PROMPTS, SAMPLES, [1.0, 0.0, None, None, 0.5, 1.0], num_samples=2,
                             references=[[20, 2], [21, 2], [22, 2]])  # fmt: skip
    assert [(r["input_ids"], r["label"]) for r in rows] == [
        ([1, 5, 10, 2], True), ([1, 5, 11, 2], False), ([1, 7, 14, 2], False), ([1, 7, 15], True)
    ]  # fmt: skip
    assert {r["prompt_len"] for r in rows} == {2}


def test_references_join_groups_and_sft_rows():
    rewards = [0.0, 0.0, None, None, 1.0, 0.0]
    references = [[20, 2], [21, 2], [22, 2]]
    groups = rows_from_samples("groups", PROMPTS, SAMPLES, rewards, num_samples=2, references=references)
    assert [len(g["sequences"]) for g in groups] == [3, 1, 3]  # p1 keeps its reference alone
    assert groups[0]["sequences"][-1] == [1, 5, 20, 2]
    assert (groups[0]["correct"][-1], groups[0]["rank"][-1], groups[0]["reference"]) == (True, 0, [False, False, True])
    sft = rows_from_samples("sft", PROMPTS, SAMPLES, rewards, num_samples=2, references=references)
    assert [r["input_ids"][2:] for r in sft] == [[20, 2], [21, 2], [22, 2], [14, 2]]
    pairs = rows_from_samples("pairs", PROMPTS, SAMPLES, rewards, num_samples=2, references=references)
    assert [(r["chosen_ids"], r["rejected_ids"]) for r in pairs] == [([1, 7, 14, 2], [1, 7, 15])]


def test_rows_are_cut_to_max_length_and_flag_it():
    rows = rows_from_samples("groups", [[1, 5]], [[10, 11, 2], [12, 2]], [1.0, 0.0], num_samples=2, max_length=4,
                             prompt_truncated=[True])  # fmt: skip
    assert rows[0]["sequences"] == [[1, 5, 10, 11], [1, 5, 12, 2]]
    assert (rows[0]["response_truncated"], rows[0]["prompt_truncated"]) == (True, True)


def test_online_rows_are_the_sampled_ids_served_without_re_tokenising(tokenizer, tiny_model):
    """A refresh's rows hold exactly the ids the sampler drew (a truncated sample without eos),
    and the datamodule serves them as they are, collated by the format."""
    from types import SimpleNamespace

    from lit_align.data.arith import ArithDataModule

    data = ArithDataModule(tokenizer, batch_format="groups", batch_size=2, num_train=8, num_val=2, num_test=2)
    data.setup()
    callback = OnlineSampling(LengthReward(), num_samples=2, num_prompts=2, max_new_tokens=3, seed=0)
    module = SimpleNamespace(tokenizer=tokenizer, policy=tiny_model, global_rank=0, device=torch.device("cpu"),
                             shared_prefix=True)  # fmt: skip
    prompts = data.prompt_set().select([0, 1])
    samples = sample_and_score(callback.sampler, callback.reward, module, data, prompts, batch_size=64,
                               seed_key="0/0/0", top_up_round=0, include_reference=True,
                               in_step=False)  # fmt: skip
    assert all(len(ids) <= 3 for ids in samples["completion_ids"])
    decoded = [tokenizer.decode(ids, skip_special_tokens=True) for ids in samples["completion_ids"]]
    assert decoded == samples["completions"]
    rows = rows_from_samples("groups", samples["prompt_ids"], samples["completion_ids"], samples["rewards"], 2,
                             references=samples["references"], max_length=data.max_length)  # fmt: skip
    data.set_train_rows(rows)
    assert data.train_split() is rows
    first = rows[0]
    assert first["sequences"][0] == samples["prompt_ids"][0] + samples["completion_ids"][0]
    (micro,) = next(iter(data.train_dataloader()))
    assert micro.response_ids.shape[0] == sum(len(r["sequences"]) for r in rows[: len(micro.prompt_ids)])


def test_a_single_round_buffer_passed_over_too_often_is_warned_about():
    """The benchmark's online DPO case: 58 pairs, 150 steps of 16 = 2,400 / 58 = 41.4 passes;
    AFT's default, 1,024 groups in 200 steps of 8, is 1.6 passes and says nothing."""
    warning = passes_warning(58, 16, 150)
    assert warning is not None
    assert "58 training rows" in warning
    assert "41 times" in warning
    assert passes_warning(1024, 8, 200) is None
    assert passes_warning(160, 16, 100) is None  # exactly 10 passes: not more than 10
    assert passes_warning(58, 16, -1) is None  # no step budget (max_steps unset): nothing to compare


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
        # SimPO and ORPO take the same best-vs-worst pairs; KTO every sample, labelled.
        pytest.param(["objective=simpo", "init=none"], "rewards/accuracies", marks=pytest.mark.slow),
        pytest.param(["objective=orpo", "init=none"], "rewards/accuracies", marks=pytest.mark.slow),
        pytest.param(["objective=kto", "init=none", "rollout.threshold=8"], "kto/kl", marks=pytest.mark.slow),
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

"""The config schema: a key a target does not take, a value of the wrong type, or settings that
cannot work together are refused by `validate` in one line naming the key, before any model or
data is built. Composing is cheap; nothing here trains."""

from __future__ import annotations

import time

import pytest
import torch

from lit_align.__main__ import CONF_DIR
from lit_align.config import ConfigError, validate
from tests.conftest import make_cfg
from tests.test_config import _cli

GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir())
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF_DIR / g).glob("*.yaml"))]
# The least each option needs to be a complete config: its ??? keys.
NEEDS = {
    ("model", "hf"): ["model.name_or_path=/some/model"],
    ("reward", "model"): ["reward.name_or_path=/some/reward_model"],
    ("strategy", "fsdp"): ["trainer.accelerator=gpu"],  # FSDP1 is refused on CPU (tested below)
    **{("data", d): ["data.source=/some/rows.jsonl"] for d in ("chat", "preference", "cot_ranking", "gsm8k")},
    ("data", "unpaired"): ["data.source=/some/rows.jsonl", "objective=kto"],
    # An objective's pipeline is picked by the objective (pipeline=rm alone: a score head under SFT).
    **{("pipeline", o): [f"objective={o}"] for o in ("aft", "dpo", "ppo", "rloo", "rm", "grpo", "simpo", "kto")},
    ("pipeline", "preference"): ["objective=orpo"],
}


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_shipped_option_validates(tmp_path, group, option):
    validate(make_cfg(tmp_path, f"{group}={option}", *NEEDS.get((group, option), []), fast=False))


REFUSED = [
    # Keys that are no argument of the target, with the nearest one that is.
    (["+data.batch_sizee=3"],
     "data.batch_sizee is not an argument of lit_align.data.arith.ArithDataModule (did you mean batch_size?)"),
    # CotRankingDataModule(**kwargs) -> _FileDataModule(**loader) -> AlignDataModule: followed.
    (["data=cot_ranking", "data.source=x", "+data.num_workerz=1"],
     "data.num_workerz is not an argument of lit_align.data.files.CotRankingDataModule (did you mean num_workers?)"),
    (["objective=ppo", "init=none", "+objective.kl.coeff=0.1"],
     "objective.kl.coeff is not an argument of lit_align.objectives.policy_gradient.KLPenalty (did you mean coef?)"),
    (["reward=composite", "+reward.rewards.correct.gold=1"],
     "reward.rewards.correct.gold is not an argument of lit_align.rewards.math.MathReward"),
    (["+trainer.max_step=3"],
     "trainer.max_step is not an argument of lightning.pytorch.Trainer (did you mean max_steps?)"),
    (["+data.tokenizer=char"], "data.tokenizer is passed by train at run time, not set in the config: remove it"),
    (["model.policy._target_=lit_align.models.tiny.tiny_lama"],
     "model.policy._target_=lit_align.models.tiny.tiny_lama cannot be imported: No module named"),
    (["model=hf", "model.name_or_path=/some/model", "~model.policy.name_or_path"],
     "model.policy.name_or_path must be set: lit_align.models.hf.load_model has no default for it"),
    # Values of the wrong type.
    (["optimizer.lr=abc"], "optimizer.lr must be a float, got 'abc'"),
    (["data.batch_size=2.5"], "data.batch_size must be an int, got 2.5"),
    (["rollout=online", "rollout.include_reference=1"],
     "rollout.include_reference must be a bool (true or false), got 1"),
    (["rollout=online", "rollout.num_samples=null"], "rollout.num_samples must be an int, got None"),
    (["data.operations=12"], "data.operations must be a string, got 12"),
    (["trainer.precision=bf16mixed"], "trainer.precision must be one of 64, 32, 16, 'transformer-engine'"),
    (["optimizer.betas=[0.9]"], "optimizer.betas must be a list of 2 values, each a float, got [0.9]"),
    (["reward=composite", "reward.weights.format=lots"], "reward.weights must be a mapping, each value a float, got"),
    (["seed=abc"], "seed must be an int, got 'abc'"),
    (["eval.before_train=yes please"], "eval.before_train must be a bool (true or false), got 'yes please'"),
    # Combinations.
    (["objective=rloo", "init=none", "rollout=none"],
     "objective=rloo trains on rollouts from online sampling: keep rollout=online"),
    (["objective=ppo", "init=none", "rollout.every_n_epochs=null"],
     "objective=ppo learns on-policy: set rollout.every_n_epochs (update epochs per rollout)"),
    (["objective=rloo", "init=none", "rollout.temperature=0.7"],
     "objective=rloo needs samples from the policy itself: set rollout.temperature=1, rollout.top_p=1, "
     "rollout.top_k=0"),
    (["rollout=online", "~reward"],
     "rollout=online scores its samples with reward, which is not set: pick one, e.g. reward=math"),
    (["objective=rm", "init=none", "rollout=online"],
     "objective=rm trains a score head, which cannot generate samples: set rollout=none"),
    (["objective=rm", "init=none", "callbacks=best_of_n"],
     "callbacks.best_of_n samples completions at test time, but objective=rm's score head cannot generate: "
     "use callbacks=default"),
    (["objective=rm", "init=none", "model.policy.head=lm"],
     "objective=rm trains a one-label score head: set model.policy.head=score, got 'lm'"),
    (["objective=dpo", "model.policy.head=score"],
     "objective=dpo trains a language model, but model.policy.head=score builds a one-label score head: "
     "set model.policy.head=lm"),
    (["data=preference", "data.source=x", "objective=dpo", "rollout=online"],
     "rollout=online samples from the data's training prompts, but PreferenceDataModule has none "
     "(its rows come with their responses): set rollout=none"),
    (["trainer.accelerator=cpu", "trainer.strategy=fsdp"],
     "trainer.strategy=fsdp is FSDP, which needs GPUs, but trainer.accelerator=cpu: "
     "on CPU use strategy=fsdp2 (or strategy=ddp)"),
    (["strategy=fsdp", "trainer.accelerator=cpu"],
     "trainer.strategy=FSDPStrategy is FSDP, which needs GPUs, but trainer.accelerator=cpu: "
     "on CPU use strategy=fsdp2 (or strategy=ddp)"),
    (["strategy=fsdp", "trainer.accelerator=gpu", "objective=rloo", "init=none"],
     "trainer.strategy=FSDPStrategy (FSDP1) cannot generate outside a training step, as online sampling does: "
     "use strategy=fsdp2"),
    (["strategy=fsdp", "trainer.accelerator=gpu", "callbacks=best_of_n"],
     "trainer.strategy=FSDPStrategy (FSDP1) cannot generate outside a training step, as callbacks.best_of_n "
     "(best-of-N) does: use strategy=fsdp2"),
    (["strategy=fsdp2", "trainer.devices=auto"],
     "strategy=fsdp2 shards over trainer.devices × trainer.num_nodes processes: set trainer.devices to a number "
     "(got 'auto')"),
    (["strategy=fsdp2", "trainer.devices=2", "objective=rloo", "init=none", "rollout.num_prompts=5"],
     "strategy=fsdp2 needs as many prompts on every rank: rollout.num_prompts=5 does not split over "
     "trainer.devices × trainer.num_nodes = 2 processes"),
    (["strategy=fsdp2", "trainer.devices=1", "trainer.num_nodes=4", "objective=rloo", "init=none",
      "rollout.num_prompts=6"],
     "strategy=fsdp2 needs as many prompts on every rank: rollout.num_prompts=6 does not split over "
     "trainer.devices × trainer.num_nodes = 4 processes"),
    (["strategy=fsdp2", "trainer.devices=2", "trainer.strategy.hybrid=true"],
     "trainer.strategy.hybrid=true shards inside a node and replicates across nodes, but trainer.num_nodes=1"),
    (["strategy=ddp", "trainer.devices=auto", "trainer.num_nodes=2"],
     "trainer.num_nodes=2 needs trainer.devices as the number of processes on each node (got 'auto')"),
    (["trainer.num_nodes=0"], "trainer.num_nodes is a number of machines, at least 1 (got 0)"),
    (["trainer.strategy={_target_:lightning.pytorch.strategies.ModelParallelStrategy,data_parallel_size:2,"
      "tensor_parallel_size:1}", "trainer.devices=2", "trainer.num_nodes=2"],
     "trainer.strategy.data_parallel_size=2 is not the world (trainer.devices × trainer.num_nodes = 4)"),
]  # fmt: skip


@pytest.mark.parametrize("overrides,message", REFUSED, ids=[" ".join(o) for o, _ in REFUSED])
def test_refused_in_one_line_naming_the_key(tmp_path, overrides, message):
    with pytest.raises(ConfigError) as info:
        validate(make_cfg(tmp_path, *overrides))
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_fsdp_needs_a_gpu_when_the_accelerator_is_auto(tmp_path, monkeypatch):
    cfg = make_cfg(tmp_path, "trainer.strategy={_target_:lightning.pytorch.strategies.FSDPStrategy}")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"^trainer\.strategy=FSDPStrategy is FSDP, .* \(no GPU found\): on CPU"):
        validate(cfg)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    validate(cfg)  # with a GPU: Lightning's to run


@pytest.mark.parametrize(
    "overrides",
    [
        # Several CPU processes under auto: Lightning picks DDP.
        ["trainer.accelerator=cpu", "trainer.devices=2"],
        ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"],
        # WandbLogger's **kwargs go to wandb.init, not to its base class: any key is let through.
        ["logger=wandb", "logger.wandb._target_=lightning.pytorch.loggers.WandbLogger", "+logger.wandb.entity=me"],
        # A nested object where an annotation names a class: its type is the target's business.
        ["objective=ppo", "init=none"],
        ["model.name_or_path=/some/tiny/run/model", "init=sft"],  # a starting model skips the SFT stage
        ["objective=aft", "rollout=none", "init=none", "callbacks=default"],  # offline AFT
    ],
    ids=lambda o: " ".join(o),
)
def test_accepted(tmp_path, overrides):
    validate(make_cfg(tmp_path, *overrides))


def test_interpolations_to_the_hydra_runtime_are_left_unresolved(tmp_path):
    cfg = make_cfg(tmp_path)
    cfg.paths.output_dir = "${hydra:runtime.output_dir}"  # as composed outside a Hydra app
    validate(cfg)


def test_cli_refuses_a_misspelled_key_in_one_line_before_building(tmp_path):
    started = time.perf_counter()
    out = _cli("+data.batch_sizee=3", f"hydra.run.dir={tmp_path}", timeout=90)
    assert out.returncode == 1, out.stderr
    expected = "data.batch_sizee is not an argument of lit_align.data.arith.ArithDataModule (did you mean batch_size?)"
    assert out.stderr.strip() == f"lit_align: {expected}"
    assert not (tmp_path / "metrics.csv").exists(), "nothing was trained or logged"
    print(f"refused after {time.perf_counter() - started:.1f} s")  # the interpreter start and imports

"""Every shipped config composes, every _target_ binds, and bad values fail naming the key."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf

from lit_align.__main__ import CONF_DIR
from lit_align.config import ConfigError, validate
from tests.conftest import make_cfg

GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir())
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF_DIR / g).glob("*.yaml"))]
RUNTIME_ARGS = {"tokenizer", "logger", "callbacks", "reward"}  # passed by train(), not by the config


def _targets(node, path=""):
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield path, node
        for key in node:
            yield from _targets(node._get_node(key), f"{path}.{key}".strip("."))


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_binds(tmp_path, group, option):
    extra = [f"{group}.name_or_path=/some/dir"] if (group, option) in {("model", "hf"), ("reward", "model")} else []
    cfg = make_cfg(tmp_path, f"{group}={option}", *extra, fast=False)
    OmegaConf.resolve(cfg)
    for path, node in _targets(cfg):
        target = get_method(node._target_)
        params = inspect.signature(target).parameters
        has_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
        keys = {k for k in node if not k.startswith("_")}
        assert has_kwargs or keys <= set(params), f"{path}: {keys - set(params)} not accepted by {node._target_}"
        if node.get("_partial_"):
            continue
        required = {
            n for n, p in params.items() if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }
        assert required <= keys | RUNTIME_ARGS, f"{path}: {node._target_} also needs {required - keys}"


@pytest.mark.parametrize(
    "override,message",
    [
        ("optimizer.lr=0", "optimizer.lr must be > 0, got 0"),
        ("optimizer.lr=-1e-3", "optimizer.lr must be > 0"),
        ("data.batch_size=0", "data.batch_size must be >= 1, got 0"),
        ("data.micro_batch_size=0", "data.micro_batch_size must be >= 1 or null"),
        ("data.max_length=100", "data.max_length=100 must exceed data.max_prompt_length=192"),
        ("trainer.max_steps=-2", "trainer.max_steps must be >= 1, 0 to evaluate only, or -1 to train by epochs"),
        ("trainer.max_steps=0 ckpt_path=last", "trainer.max_steps=0 evaluates the model as loaded, not a checkpoint"),
        ("eval.max_new_tokens=0", "eval.max_new_tokens must be >= 1"),
        ("optimizer.lr=fast", "optimizer.lr must be a float, got 'fast'"),  # the type before the range
        ("max_bad_steps=0", "max_bad_steps must be >= 1, got 0"),
    ],
)
def test_invalid_values_name_the_key(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        validate(make_cfg(tmp_path, *override.split()))


def test_incompatible_combinations_are_refused_in_one_line(tmp_path):
    cfg = make_cfg(tmp_path, "objective=dpo", "rollout=online", "objective.precompute_ref=true")
    with pytest.raises(ConfigError, match=r"set objective\.precompute_ref=false \(a reference model is kept\)"):
        validate(cfg)
    validate(make_cfg(tmp_path, "objective=dpo", "rollout=online"))  # without it: fine


def test_every_offline_preference_objective_takes_online_sampling(tmp_path):
    """Online sampling makes pairs (DPO, SimPO, ORPO) and labelled single samples (KTO)
    (tests/test_online.py)."""
    for objective in ("kto", "simpo", "orpo"):
        validate(make_cfg(tmp_path, f"objective={objective}", "rollout=online"))
        validate(make_cfg(tmp_path, f"objective={objective}"))  # offline: fine


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["objective=rloo", "rollout.num_samples=1"], r"objective=rloo's baseline .* >= 2 \(got 1: every advantage"),
        (["objective=dpo", "rollout=online", "rollout.num_samples=1", "rollout.include_reference=false"],
         r"objective=dpo learns from pairs of a prompt's samples: set rollout.num_samples >= 2 \(got 1\)"),
        (["objective=aft", "rollout.num_samples=1", "rollout.include_reference=false"],
         r"objective=aft learns from groups"),
    ],
)  # fmt: skip
def test_degenerate_sampling_is_refused_before_anything_is_built(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(make_cfg(tmp_path, *overrides))
    two = [o.replace("num_samples=1", "num_samples=2") for o in overrides]
    validate(make_cfg(tmp_path, *two))  # two samples: fine


def test_defaults_are_valid(tmp_path):
    validate(make_cfg(tmp_path, fast=False))


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "lit_align", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow  # 13-60 s of subprocesses: the default suite keeps under 10 minutes
def test_cli_prints_the_composed_config():
    out = _cli("--cfg", "job")
    assert out.returncode == 0, out.stderr
    cfg = OmegaConf.create(out.stdout)
    assert cfg.objective._target_ == "lit_align.objectives.sft.SFT"
    assert cfg.model.policy._target_ == "lit_align.models.tiny.tiny_llama"


@pytest.mark.slow  # 13-60 s of subprocesses: the default suite keeps under 10 minutes
def test_cli_unknown_option_lists_valid_ones():
    out = _cli("objective=nope")
    assert out.returncode != 0
    assert "Could not find 'objective/nope'" in out.stderr and "sft" in out.stderr


def test_cli_bad_value_fails_in_one_line_before_building(tmp_path):
    out = _cli("optimizer.lr=0", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 1
    assert out.stderr.strip() == "lit_align: optimizer.lr must be > 0, got 0"


@pytest.mark.slow  # 13-60 s of subprocesses: the default suite keeps under 10 minutes
def test_cli_missing_model_path_is_one_line(tmp_path):
    out = _cli("model=hf", f"model.name_or_path={tmp_path}/nowhere", f"hydra.run.dir={tmp_path}/run")
    assert out.returncode == 1
    assert out.stderr.strip() == f"lit_align: model.name_or_path: no such directory: {tmp_path}/nowhere"
    out = _cli("model=hf", f"hydra.run.dir={tmp_path}/run")
    assert out.returncode == 1
    expected = "lit_align: model.name_or_path must be set, e.g. model.name_or_path=<value> on the command line"
    assert out.stderr.strip() == expected


# -- one rule for every objective ---------------------------------------------------------------

POST_SFT = ["aft", "dpo", "ppo", "rloo", "rm"]


@pytest.mark.parametrize("objective", ["sft", *POST_SFT])
def test_an_objective_config_holds_only_the_objective(tmp_path, objective):
    """conf/objective/<x>.yaml sets the objective node and nothing else: without its pipeline the
    composed config is the root's but for ``objective``."""
    base = OmegaConf.to_container(make_cfg(tmp_path, fast=False))
    alone = OmegaConf.to_container(make_cfg(tmp_path, f"objective={objective}", "pipeline=none", fast=False))
    del base["objective"], alone["objective"]
    assert alone == base


@pytest.mark.parametrize("objective", POST_SFT)
def test_every_objective_but_sft_starts_from_the_sft_model(tmp_path, objective):
    cfg = make_cfg(tmp_path, f"objective={objective}", fast=False)
    # The shared start: the default SFT run as stage 1 (same steps, lr, batch), then a shorter run.
    assert cfg.init.max_steps == 400 and cfg.init.lr == 3e-3 and cfg.init.batch_size == 32
    assert cfg.trainer.max_steps < 400 and cfg.optimizer.lr < 3e-3
    online = objective in ("aft", "rloo", "ppo")
    assert ("_target_" in cfg.rollout) == online
    assert cfg.rollout.get("every_n_epochs") == (1 if objective in ("rloo", "ppo") else None)
    assert ("best_of_n" in cfg.callbacks) == (objective == "aft")
    assert (cfg.model.policy.head == "score") == (objective == "rm")
    validate(cfg)


@pytest.mark.parametrize("objective", ["dpo", "kto", "simpo", "orpo"])
def test_offline_preference_objectives_share_one_budget_at_a_smaller_rate_than_sft(tmp_path, objective):
    """pipeline/preference.yaml: 150 steps of 16 rows at lr 1e-4 (the RL pipelines' rate; at post_sft's
    5e-4 KTO tied its start on the built-in task, README)."""
    cfg = make_cfg(tmp_path, f"objective={objective}", fast=False)
    assert (cfg.optimizer.lr, cfg.trainer.max_steps, cfg.data.batch_size) == (1e-4, 150, 16)
    assert cfg.objective.get("sft_weight", 0.0) == (0.0 if objective == "orpo" else 1.0)


def test_sft_has_no_stage_and_init_none_starts_from_the_model_as_configured(tmp_path):
    assert not make_cfg(tmp_path, fast=False).get("init")
    cfg = make_cfg(tmp_path, "objective=dpo", "init=none", fast=False)
    assert not cfg.get("init") and cfg.objective.sft_weight == 1.0 and cfg.trainer.max_steps == 150
    plain = make_cfg(tmp_path, "objective=dpo", "pipeline=none", fast=False)
    assert "sft_weight" not in plain.objective and plain.trainer.max_steps == 400  # DPO as the paper, from scratch


def test_a_task_brings_the_sft_start_it_needs(tmp_path):
    assert make_cfg(tmp_path, "data=instruct", fast=False).trainer.max_steps == 1500
    assert make_cfg(tmp_path, "data=instruct", "objective=rloo", fast=False).init.max_steps == 1500
    assert make_cfg(tmp_path, "objective=rloo", fast=False).init.max_steps == 400
    assert make_cfg(tmp_path, "data=instruct", "sft_steps=700", fast=False).trainer.max_steps == 700


def test_yaml_values_are_the_code_defaults(tmp_path):
    """A class's base option sets each argument to its code default, so a run from Python and one
    from the command line mean the same (an option's deltas, reward=deberta's encoding, are not base)."""
    base = ["rollout=online", "reward=model", "reward.name_or_path=/r", "callbacks=best_of_n"]
    differ = {}
    for overrides in [base, *([f"objective={o}", "pipeline=none"] for o in POST_SFT)]:
        cfg = make_cfg(tmp_path, *overrides, fast=False)
        cfg.paths.output_dir = str(tmp_path)
        for path, node in _targets(cfg):
            if not node._target_.startswith("lit_align.") or path.startswith(("model", "logger", "data")):
                continue
            params = inspect.signature(get_method(node._target_)).parameters
            values = OmegaConf.to_container(node, resolve=True)
            for key, value in values.items():
                default = params[key].default if key in params else inspect.Parameter.empty
                if default is not inspect.Parameter.empty and not isinstance(value, dict) and value != default:
                    differ[f"{node._target_}.{key}"] = (value, default)
    assert differ == {}


def test_the_settings_runs_tune_most_have_one_default(tmp_path):
    """Sampling, the critic's learning rate and the reward model's batching: each class's
    signature default is the composed YAML's value, so a run built in Python samples and learns
    as the same run from the command line."""
    cfg = make_cfg(tmp_path, "objective=ppo", "pipeline=none", "rollout=online", "reward=model",
                   "reward.name_or_path=/r", fast=False)  # fmt: skip
    pinned = {"rollout": ["include_reference", "num_prompts", "max_new_tokens"], "objective": ["critic_lr_scale"],
              "reward": ["batch_size", "device"]}  # fmt: skip
    for group, keys in pinned.items():
        params = inspect.signature(get_method(cfg[group]._target_)).parameters
        for key in keys:
            assert params[key].default == OmegaConf.select(cfg, f"{group}.{key}"), f"{group}.{key}"


def test_cli_help_is_the_projects_own_page():
    out = _cli("--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("lit_align: post-training (SFT, DPO, AFT, RLOO, PPO, reward models)")
    assert "Powered by Hydra" not in out.stdout and "== Config ==" not in out.stdout  # Hydra's generic page
    examples = [line.split("#")[0].strip() for line in out.stdout.splitlines() if "python -m lit_align " in line]
    assert examples[1:4] == [
        "python -m lit_align",
        "python -m lit_align objective=dpo",
        "python -m lit_align -m objective=dpo,rloo seed=0,1",
    ]
    assert "runs/<objective>/<date>_<time>/" in out.stdout
    listed = out.stdout.split("Options of each group:")[1]
    for group in GROUPS:  # every config group with its options, e.g. "objective: aft, dpo, ..."
        if group != "hydra":
            options = ", ".join(sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")))
            assert f"{group}: {options}" in listed

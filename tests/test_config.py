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
        ("trainer.max_steps=0", "trainer.max_steps must be >= 1"),
        ("eval.max_new_tokens=0", "eval.max_new_tokens must be >= 1"),
        ("optimizer.lr=fast", "optimizer.lr must be a float, got 'fast'"),  # the type before the range
        ("max_bad_steps=0", "max_bad_steps must be >= 1, got 0"),
    ],
)
def test_invalid_values_name_the_key(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        validate(make_cfg(tmp_path, override))


def test_incompatible_combinations_are_refused_in_one_line(tmp_path):
    cfg = make_cfg(tmp_path, "objective=dpo", "rollout=online", "objective.precompute_ref=true")
    with pytest.raises(ConfigError, match=r"set objective\.precompute_ref=false \(a reference model is kept\)"):
        validate(cfg)
    validate(make_cfg(tmp_path, "objective=dpo", "rollout=online"))  # without it: fine


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


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "lit_align", *args], capture_output=True, text=True, timeout=timeout)


def test_cli_prints_the_composed_config():
    out = _cli("--cfg", "job")
    assert out.returncode == 0, out.stderr
    cfg = OmegaConf.create(out.stdout)
    assert cfg.objective._target_ == "lit_align.objectives.sft.SFT"
    assert cfg.model.policy._target_ == "lit_align.models.tiny.tiny_llama"


def test_cli_unknown_option_lists_valid_ones():
    out = _cli("objective=nope")
    assert out.returncode != 0
    assert "Could not find 'objective/nope'" in out.stderr and "sft" in out.stderr


def test_cli_bad_value_fails_in_one_line_before_building(tmp_path):
    out = _cli("optimizer.lr=0", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 1
    assert out.stderr.strip() == "lit_align: optimizer.lr must be > 0, got 0"


def test_cli_missing_model_path_is_one_line(tmp_path):
    out = _cli("model=hf", f"model.name_or_path={tmp_path}/nowhere", f"hydra.run.dir={tmp_path}/run")
    assert out.returncode == 1
    assert out.stderr.strip() == f"lit_align: model.name_or_path: no such directory: {tmp_path}/nowhere"
    out = _cli("model=hf", f"hydra.run.dir={tmp_path}/run")
    assert out.returncode == 1
    expected = "lit_align: model.name_or_path must be set, e.g. model.name_or_path=<value> on the command line"
    assert out.stderr.strip() == expected

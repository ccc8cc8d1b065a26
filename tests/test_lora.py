"""LoRA through PEFT: only the adapters train, the policy with its adapters off is the reference
(no second copy), and the export is a plain transformers model with the adapters merged."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from lit_align.data.collate import encode_prompt_response
from lit_align.data.formats import FORMATS
from lit_align.models.lora import add_lora, is_lora
from lit_align.models.response_forward import response_logps
from lit_align.module import AlignModule
from lit_align.objectives.dpo import DPO
from lit_align.train import train
from tests.conftest import losses_by_step, make_cfg


def _inputs(tokenizer):
    """Two prompts, three responses: the module's forward inputs."""
    batch = FORMATS["sft"].collate(
        [encode_prompt_response(tokenizer, p, r, 16, 32) for p, r in (("12+7=", "19"), ("3*4=", "12;"), ("3*4=", "1"))],
        tokenizer.pad_token_id,
    )
    return batch.forward_inputs()


def test_rank_zero_is_full_fine_tuning(tiny_model):
    assert add_lora(tiny_model, r=0) is tiny_model


def test_reference_is_the_policy_with_adapters_off(tokenizer, tiny_model):
    base = copy.deepcopy(tiny_model).eval()
    policy = add_lora(tiny_model, r=4, alpha=8)
    module = AlignModule(policy, DPO(), tokenizer, optimizer=partial(torch.optim.AdamW, lr=1e-3))
    assert module.reference is None and is_lora(module.policy)  # no second copy of the weights
    trainable = {name for name, p in module.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    inputs = _inputs(tokenizer)
    with torch.no_grad():  # as if trained: B != 0, so the adapted policy moves away from the base
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
        expected = response_logps(base, **inputs).logps
        moved = response_logps(policy.eval(), **inputs).logps
    assert torch.equal(module.reference_logps(inputs), expected)  # bit for bit the base model
    assert not torch.allclose(moved, expected, atol=1e-3)
    assert policy.training is False  # the reference forward put the policy back in the mode it was in


@pytest.fixture
def start_dir(tmp_path, tiny_model, tokenizer):
    """A saved tiny model to start from, so its weights are known."""
    tiny_model.save_pretrained(tmp_path / "start")
    tokenizer.save_pretrained(tmp_path / "start")
    return tmp_path / "start"


def test_lora_dpo_run_starts_at_log2_and_exports_merged_low_rank_updates(tmp_path, start_dir):
    r = 2
    lora = [f"model.lora.r={r}", "model.lora.alpha=4"]
    summary = train(make_cfg(tmp_path / "run", "objective=dpo", "init=none", "objective.sft_weight=0",
                             f"model.name_or_path={start_dir}",
                             *lora, "optimizer.lr=1e-2", "trainer.max_steps=3"))  # fmt: skip
    assert summary["steps"] == 3
    # Step 0: the policy is the reference exactly (B = 0), so every pair's loss is log 2.
    assert losses_by_step(tmp_path / "run")[0] == pytest.approx(0.693147, abs=1e-6)
    start, merged = load_file(start_dir / "model.safetensors"), load_file(tmp_path / "run/model/model.safetensors")
    assert merged.keys() == start.keys()  # a plain model: no lora_A/lora_B, no base_layer prefix
    changed = {name for name in start if not torch.equal(merged[name], start[name])}
    linear = {name for name in start if name.endswith(("proj.weight",))}
    assert changed == linear  # every linear layer moved; embeddings and norms are frozen
    for name in linear:  # W + (alpha / r) B A: an update of rank at most r
        assert torch.linalg.matrix_rank(merged[name] - start[name], atol=1e-5) <= r
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run/model")
    assert not is_lora(model) and model.config.model_type == "llama"


def test_lora_ppo_with_a_separate_critic(tmp_path):
    # The critic copies the LoRA decoder: its own adapters train on the frozen trunk.
    summary = train(make_cfg(tmp_path, "objective=ppo", "init=none", "objective.critic=separate", "model.lora.r=2",
                             "rollout.num_prompts=4", "rollout.num_samples=2", "trainer.max_steps=2"))  # fmt: skip
    assert summary["steps"] == 2 and summary["skipped_steps"] == 0


def test_lora_reward_model_trains_its_new_head_in_full(tmp_path):
    # A score head is new: PEFT trains it whole (SEQ_CLS), the trunk through adapters.
    summary = train(make_cfg(tmp_path, "objective=rm", "init=none", "model.lora.r=2", "trainer.max_steps=2"))
    assert summary["steps"] == 2 and summary["skipped_steps"] == 0
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model")
    assert model.config.num_labels == 1 and not is_lora(model)

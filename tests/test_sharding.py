"""The model-side pieces of sharding, on one process: which modules are FSDP units, and the
export's rebuild of an unsharded (LoRA) model from gathered weights."""

from __future__ import annotations

import copy

import torch

from lit_align.models.export import _unsharded_copy
from lit_align.models.forward import forward_logps
from lit_align.models.lora import add_lora
from lit_align.models.sharding import decoder_layer_policy, decoder_layers, synced_generation


def test_decoder_layers_are_the_models_no_split_modules(tiny_model):
    assert decoder_layers(tiny_model) == list(tiny_model.model.layers)
    lora = add_lora(copy.deepcopy(tiny_model), r=2)
    assert [type(m).__name__ for m in decoder_layers(lora)] == ["LlamaDecoderLayer"] * 2


def test_fsdp1_policy_wraps_decoder_layers_only(tiny_model):
    policy = decoder_layer_policy()
    wrapped = [type(m).__name__ for m in tiny_model.modules() if policy._lambda_fn(m)]
    assert wrapped == ["LlamaDecoderLayer"] * 2


def test_one_process_generates_unsynced(tiny_model):
    assert not synced_generation(tiny_model)


def test_export_rebuilds_a_lora_model_from_its_full_weights(tokenizer, tiny_model):
    lora = add_lora(tiny_model, r=2)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_()
    rebuilt = _unsharded_copy(lora, lora.state_dict())
    ids = tokenizer(["1+2=3"], return_tensors="pt")
    expected = forward_logps(lora.eval(), ids["input_ids"], ids["attention_mask"])
    torch.testing.assert_close(forward_logps(rebuilt.eval(), ids["input_ids"], ids["attention_mask"]), expected)
    merged = rebuilt.merge_and_unload()
    torch.testing.assert_close(forward_logps(merged, ids["input_ids"], ids["attention_mask"]), expected)

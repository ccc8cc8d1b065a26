import pytest
import torch
from transformers import AutoModelForCausalLM

from lit_align.config import ConfigError
from lit_align.models.hf import load_model, load_tokenizer
from lit_align.models.tiny import tiny_llama


def test_tiny_llama_is_sized_by_its_arguments(tokenizer):
    model = tiny_llama(tokenizer)
    assert model.config.model_type == "llama"
    assert 0.8e6 < sum(p.numel() for p in model.parameters()) < 1.0e6
    assert model.config.vocab_size == len(tokenizer)
    assert (model.config.pad_token_id, model.config.eos_token_id) == (0, 2)
    with pytest.raises(ValueError, match="not divisible"):
        tiny_llama(tokenizer, hidden_size=30, num_heads=4)


def test_hf_save_load_round_trip(tokenizer, tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded_tok = load_tokenizer(str(tmp_path))
    loaded = load_model(str(tmp_path), loaded_tok)
    ids = torch.tensor([tokenizer("3+4=7\n#### 7")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, tiny_model(ids).logits)
    assert isinstance(AutoModelForCausalLM.from_pretrained(tmp_path), type(tiny_model))
    assert load_model(str(tmp_path), loaded_tok, dtype="bfloat16").dtype == torch.bfloat16


@pytest.mark.parametrize("path", ["/no/such/model", "./missing", "runs/x/model"])
def test_missing_local_path_is_one_line(path):
    with pytest.raises(ConfigError, match=r"^model.name_or_path: no such directory: ") as info:
        load_tokenizer(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("shards", [False, True])  # a checkpoint file, or FSDP2's folder of per-rank shards
def test_a_training_checkpoint_as_the_model_says_how_to_use_it(tmp_path, shards):
    checkpoint = tmp_path / "run/checkpoints/last.ckpt"
    (checkpoint if shards else checkpoint.parent).mkdir(parents=True)
    if not shards:
        checkpoint.write_bytes(b"PK")
    with pytest.raises(ConfigError) as info:
        load_tokenizer(str(checkpoint))
    assert str(info.value) == (
        f"model.name_or_path={checkpoint} is a training checkpoint, not a model: resume its run with "
        f"ckpt_path={checkpoint} (and its hydra.run.dir), or load the model the run exported: "
        f"model.name_or_path={tmp_path / 'run/model'}"
    )


def test_a_file_as_the_model_is_one_line(tmp_path):
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"is a file: give a model's directory \(config.json and weights"):
        load_tokenizer(str(tmp_path / "weights.safetensors"))


def test_unreachable_hub_id_is_one_line():  # conftest puts the Hub offline
    with pytest.raises(ConfigError, match="neither a local directory nor a reachable Hub model") as info:
        load_tokenizer("lit-align-test/definitely-not-a-model")
    assert "\n" not in str(info.value)


def test_score_head_from_scratch_or_from_a_causal_lm(tokenizer, tmp_path):
    torch.manual_seed(0)
    scorer = tiny_llama(tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, head="score")
    assert scorer.config.num_labels == 1 and scorer(input_ids=torch.tensor([[1, 5, 2]])).logits.shape == (1, 1)
    lm = tiny_llama(tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    lm.save_pretrained(tmp_path)
    from_lm = load_model(str(tmp_path), tokenizer, head="score")  # the SFT model's trunk, a new head
    assert torch.equal(from_lm.model.embed_tokens.weight, lm.model.embed_tokens.weight)
    assert from_lm.config.num_labels == 1

"""Hub checkpoints by name: `model=qwen2.5-0.5b` and `reward=deberta`, run on tiny local
stand-ins saved in the same schema (tests/fixtures_models.py), so the loading, encoding and
generation code under test is the code the real checkpoints go through."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, Qwen2ForCausalLM

from lit_align.config import ConfigError, validate
from lit_align.data.chat import chat_prompt, encode_conversation
from lit_align.data.collate import encode_prompt, encode_prompt_response, pad
from lit_align.models.forward import position_ids
from lit_align.models.hf import load_model, load_tokenizer
from lit_align.rewards.model import ModelReward, encode_segments
from lit_align.rollout.generate import generate_completions
from lit_align.rollout.sampler import Sampler
from lit_align.train import train
from tests.conftest import SMALL_DATA, losses_by_step, make_cfg
from tests.fixtures_models import (
    CLS,
    ENDOFTEXT,
    IM_END,
    QWEN_VOCAB_SIZE,
    SEP,
    deberta_tokenizer,
    save_tiny_deberta_rm,
    save_tiny_qwen,
)

# 4 prompts × 4 samples = 2 steps of 2 prompts (8 samples) per rollout, every sample logged.
RL = ["init=none", "rollout.num_prompts=4", "rollout.num_samples=4", "rollout.log_samples=16", "data.batch_size=2"]


@pytest.fixture(scope="session")
def qwen_dir(tmp_path_factory):
    return save_tiny_qwen(tmp_path_factory.mktemp("qwen"))


@pytest.fixture(scope="session")
def deberta_dir(tmp_path_factory):
    return save_tiny_deberta_rm(tmp_path_factory.mktemp("deberta"))


def test_the_options_are_the_generic_configs_with_a_hub_name(tmp_path):
    cfg = make_cfg(tmp_path, "model=qwen2.5-0.5b", "reward=deberta", fast=False)
    validate(cfg)
    generic = make_cfg(tmp_path, "model=hf", "model.name_or_path=Qwen/Qwen2.5-0.5B-Instruct",
                       "reward=model", "reward.name_or_path=OpenAssistant/reward-model-deberta-v3-large-v2",
                       fast=False)  # fmt: skip
    # Every key of hf.yaml and model.yaml, as they are; the options change only these.
    model, reward = OmegaConf.to_container(generic.model), OmegaConf.to_container(generic.reward)
    model["policy"]["attn_implementation"] = "sdpa"
    reward["encoding"] = "pair"
    assert OmegaConf.to_container(cfg.model) == model
    assert OmegaConf.to_container(cfg.reward) == reward
    with pytest.raises(ConfigError, match=r"^reward\.encoding must be one of 'concat', 'pair', got 'pairs'$"):
        validate(make_cfg(tmp_path, "reward=deberta", "reward.encoding=pairs", fast=False))


def test_a_tokenizer_without_bos_encodes_prompt_then_response_then_im_end(qwen_dir):
    tokenizer = load_tokenizer(str(qwen_dir))
    assert tokenizer.bos_token_id is None
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (IM_END, ENDOFTEXT)
    # Byte tokens are their byte values ("2" 50, "+" 43, "=" 61, "?" 63, "\n" 10, " " 32, "4" 52);
    # "####" is the second merge, 257. No bos in front; <|im_end|> closes the response.
    row = encode_prompt_response(tokenizer, "2+2=?\n", "#### 4", max_prompt_length=8, max_length=16)
    assert row == {"input_ids": [50, 43, 50, 61, 63, 10, 257, 32, 52, IM_END], "prompt_len": 6,
                   "prompt_truncated": False, "response_truncated": False}  # fmt: skip
    # A prompt over its budget keeps its last tokens, with nothing put in front of them.
    cut = encode_prompt_response(tokenizer, "2+2=?\n", "#### 4", max_prompt_length=4, max_length=7)
    assert cut == {"input_ids": [50, 61, 63, 10, 257, 32, 52], "prompt_len": 4,
                   "prompt_truncated": True, "response_truncated": True}  # fmt: skip
    # ChatML: the default system turn, the user turn, the assistant's header; the reply's
    # trained tokens are its text and <|im_end|>, which is the eos, so none is added.
    system = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    messages = [{"role": "user", "content": "2+2=?"}, {"role": "assistant", "content": "4"}]
    assert chat_prompt(tokenizer, messages[:1]) == system + "<|im_start|>user\n2+2=?<|im_end|>\n<|im_start|>assistant\n"
    conversation = encode_conversation(tokenizer, messages, max_length=256)
    assert [i for i, m in zip(conversation["input_ids"], conversation["loss_mask"], strict=True) if m] == [52, IM_END]


def test_generation_ignores_the_checkpoints_sampling_defaults_and_stops_at_im_end(qwen_dir, monkeypatch):
    tokenizer = load_tokenizer(str(qwen_dir))
    model = load_model(str(qwen_dir), tokenizer)
    assert model.generation_config.repetition_penalty == 1.1  # as Qwen2.5-Instruct's generation_config.json
    # A model at init with tied embeddings repeats its last token: the first prompt ends in
    # <|im_end|>, so greedy decoding ends it at once; the second goes on.
    prompts = ["2+2=?<|im_end|>", "3+4=?\n"]
    ids, mask = pad([encode_prompt(tokenizer, p, 64)[0] for p in prompts], tokenizer.pad_token_id, left=True)
    scores = []
    generate = model.generate

    def recording(**kwargs):  # the scores generate picks tokens from, after its logits processors
        out = generate(**kwargs, output_scores=True, return_dict_in_generate=True)
        scores.append(out.scores[0])
        return out.sequences

    monkeypatch.setattr(model, "generate", recording)
    completion, texts = generate_completions(model, tokenizer, ids, mask, max_new_tokens=4)
    assert completion.tolist() == [[IM_END, ENDOFTEXT, ENDOFTEXT, ENDOFTEXT], [10, 10, 10, 10]]
    assert texts == ["", "\n\n\n\n"]
    Sampler(num_samples=1, max_new_tokens=4, seed=0)(model, tokenizer, ids, mask, with_logps=False)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits[:, -1]
    # Greedy and temperature-1 sampling choose from the model's own logits: no repetition
    # penalty (it would divide the repeated tokens' logits by 1.1), no top-k, no top-p.
    for first_step in scores:
        torch.testing.assert_close(first_step, logits)


def test_sft_on_the_built_in_task_from_a_qwen_checkpoint_exports_a_qwen2_model(qwen_dir, tmp_path):
    summary = train(make_cfg(tmp_path, "model=qwen2.5-0.5b", f"model.name_or_path={qwen_dir}", *SMALL_DATA))
    assert summary["objective"] == "sft" and summary["steps"] == 6
    losses = losses_by_step(tmp_path)
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses.values())
    # At init the next token is about uniform over the model's 272 rows: loss ≈ ln 272 = 5.61.
    assert losses[min(losses)] == pytest.approx(math.log(QWEN_VOCAB_SIZE), abs=0.1)
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert isinstance(exported, Qwen2ForCausalLM) and exported.config.model_type == "qwen2"
    start = AutoModelForCausalLM.from_pretrained(qwen_dir)
    assert not torch.equal(exported.model.embed_tokens.weight, start.model.embed_tokens.weight)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (None, "<|im_end|>", "<|endoftext|>")
    assert exported.generation_config.repetition_penalty == 1.1  # the checkpoint's file travels on


def test_reward_deberta_scores_prompt_and_completion_as_two_segments(deberta_dir, tmp_path):
    cfg = make_cfg(tmp_path, "reward=deberta", f"reward.name_or_path={deberta_dir}", "reward.device=cpu")
    validate(cfg)
    reward = instantiate(cfg.reward)
    assert isinstance(reward, ModelReward) and reward.encoding == "pair" and reward.type_ids
    # [CLS] ▁ 2 + 2 = ? [SEP] ▁ # # # # ▁ 4 [SEP]: "▁" is 5, "!" 6 and on (the newline is
    # normalised away); type ids 0 on the prompt segment, 1 on the completion's.
    ids, types = reward.encode("2+2=?\n", "#### 4")
    assert ids == [CLS, 5, 23, 16, 23, 34, 36, SEP, 5, 8, 8, 8, 8, 5, 25, SEP]
    assert types == [0] * 8 + [1] * 8
    assert (ids, types) == tuple(reward.tokenizer("2+2=?\n", "#### 4")[k] for k in ("input_ids", "token_type_ids"))
    # lit_align's own encoding (objective=rm models): one segment, no separator between.
    concat = ModelReward(str(deberta_dir))
    assert concat.encode("2+2=?\n", "#### 4") == ([CLS, 5, 23, 16, 23, 34, 36, 5, 8, 8, 8, 8, 5, 25, SEP], [0] * 15)

    prompts = ["2+2=?\n", "2+2=?\n", "Tom has 3 pens. He buys 1 more. How many pens does Tom have now?\n"]
    completions = ["#### 4", "#### 5", "3+1=4\n#### 4"]
    scores = reward(prompts, completions)
    model = AutoModelForSequenceClassification.from_pretrained(deberta_dir).eval()
    with torch.no_grad():
        direct = [model(**reward.tokenizer(p, c, return_tensors="pt")).logits[0, 0].item()
                  for p, c in zip(prompts, completions, strict=True)]  # fmt: skip
    assert scores == pytest.approx(direct, abs=1e-5) and len(set(scores)) == 3
    one_by_one = ModelReward(str(deberta_dir), batch_size=1, encoding="pair")
    assert one_by_one(prompts, completions) == pytest.approx(scores, abs=1e-5)  # padding changes nothing
    assert reward(prompts, completions) == scores  # deterministic
    assert all(abs(a - b) > 1e-3 for a, b in zip(concat(prompts, completions), scores, strict=True))
    # The type ids reach the model, padded with 0 like the ids (DeBERTa-v3 has no type
    # embeddings, type_vocab_size 0; a BERT-style cross-encoder has).
    seen, forward = [], reward.model
    reward.model = lambda **inputs: seen.append(inputs) or forward(**inputs)
    reward(prompts[1:], completions[1:])
    short, long = (reward.encode(p, c)[1] for p, c in zip(prompts[1:], completions[1:], strict=True))
    assert seen[0]["token_type_ids"].tolist() == [short + [0] * (len(long) - len(short)), long]


def test_pair_encoding_cuts_like_training_pairs():
    """The prompt segment ([CLS] prompt [SEP]) keeps its last 5 tokens: [CLS] d e f [SEP]; the
    completion gets 9 − 5 − 1 (its [SEP]) = 3 tokens: ▁ u v."""
    ids, types = encode_segments(deberta_tokenizer(), "abcdef", "uvwxyz", max_prompt_length=5, max_length=9)
    a = 70  # "a"
    assert ids == [CLS, a + 3, a + 4, a + 5, SEP, 5, a + 20, a + 21, SEP]
    assert types == [0] * 5 + [1] * 4


def test_rloo_rewarded_by_reward_deberta(deberta_dir, tmp_path):
    reward = ["reward=deberta", f"reward.name_or_path={deberta_dir}", "reward.device=cpu"]
    summary = train(make_cfg(tmp_path, "objective=rloo", *RL, *reward, "trainer.max_steps=2"))
    assert summary["steps"] == 2 and math.isfinite(summary["final"]["train/loss"])
    rows = [json.loads(line) for line in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
    assert len(rows) == 16
    direct = ModelReward(str(deberta_dir), encoding="pair")(
        [r["prompt"] for r in rows], [r["completion"] for r in rows]
    )
    assert [r["reward"] for r in rows] == pytest.approx(direct, abs=1e-5)

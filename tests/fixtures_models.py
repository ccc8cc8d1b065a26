"""Tiny local stand-ins for Hub checkpoints, saved in the Hub's schema so that the loading code
under test is the code a real checkpoint goes through.

- `save_tiny_qwen`: a 2-layer ``Qwen2ForCausalLM`` with a ``Qwen2Tokenizer`` (byte-level BPE,
  Qwen's pre-tokenizer) carrying Qwen2.5-Instruct's special tokens (``<|endoftext|>`` pad,
  ``<|im_end|>`` eos, no bos), a ChatML chat template, and Qwen2.5-Instruct's
  ``generation_config.json`` sampling defaults.
- `save_tiny_deberta_rm`: a 2-layer ``DebertaV2ForSequenceClassification`` with one label in
  the schema of ``OpenAssistant/reward-model-deberta-v3-large-v2`` (relative attention, no
  absolute positions, no token-type embeddings) and a ``DebertaV2Tokenizer`` (Unigram,
  ``[CLS] A [SEP] B [SEP]`` pair template).

Token ids are chosen to be read by hand: the Qwen stand-in's byte tokens have id = byte value
(``"2+2"`` is ``[50, 43, 50]``); the DeBERTa stand-in has its 5 special tokens, ``▁`` (5),
then one piece per printable character from ``!`` (6).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
    DebertaV2Tokenizer,
    GenerationConfig,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2Tokenizer,
)  # fmt: skip

# -- Qwen2.5 -------------------------------------------------------------------------------------

# Qwen2.5's special tokens, in the Hub tokenizer's order, after the byte-level vocabulary.
QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Two merges, so the stand-in is a BPE with merges like the real one: "##" and "####".
QWEN_MERGES = [("#", "#"), ("##", "##")]
ENDOFTEXT, IM_START, IM_END = 258, 259, 260  # 256 bytes, the 2 merges, then QWEN_SPECIAL
# The model's embedding has more rows than the tokenizer has tokens, as Qwen2.5's (151,936
# rows for 151,665 tokens).
QWEN_VOCAB_SIZE = 272

# Qwen2.5-Instruct's template without its tool-calling branches: ChatML turns, and the default
# system turn when the conversation has none.
QWEN_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# Qwen2.5-Instruct's generation_config.json (the repetition penalty is 1.05 to 1.1 by size):
# sampling defaults that `generate` applies to every call that does not set them itself.
QWEN_GENERATION = {
    "do_sample": True,
    "temperature": 0.7,
    "top_p": 0.8,
    "top_k": 20,
    "repetition_penalty": 1.1,
}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: each byte as a printable character (space is ``Ġ``)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = iter(range(256, 512))
    return {b: chr(b) if b in printable else chr(next(shifted)) for b in range(256)}


def qwen_tokenizer() -> Qwen2Tokenizer:
    """A Qwen2.5-Instruct-like tokenizer over 256 byte tokens (id = byte value) and 2 merges."""
    vocab = {char: byte for byte, char in _bytes_to_unicode().items()}
    vocab |= {"".join(pair): 256 + i for i, pair in enumerate(QWEN_MERGES)}
    vocab |= {token: len(vocab) + i for i, token in enumerate(QWEN_SPECIAL)}
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=QWEN_MERGES,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=["<|im_start|>", "<|im_end|>"],
        model_max_length=32768,
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    assert tokenizer.convert_tokens_to_ids(list(QWEN_SPECIAL)) == [ENDOFTEXT, IM_START, IM_END]
    return tokenizer


def save_tiny_qwen(path: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide ``Qwen2ForCausalLM`` (grouped-query attention, tied embeddings, as
    Qwen2.5-0.5B) with `qwen_tokenizer`, saved to ``path`` as a Hub checkpoint is laid out."""
    tokenizer = qwen_tokenizer()
    config = Qwen2Config(
        vocab_size=QWEN_VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=ENDOFTEXT, eos_token_id=IM_END,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=ENDOFTEXT, pad_token_id=ENDOFTEXT, eos_token_id=[IM_END, ENDOFTEXT], **QWEN_GENERATION
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# -- DeBERTa-v3 reward model ---------------------------------------------------------------------

# DeBERTa-v3's special tokens at its ids ([MASK] sits at 128000 there; here after them), then
# the word-start marker and one piece per printable character.
DEBERTA_SPECIAL = ("[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]")
PAD, CLS, SEP = 0, 1, 2
METASPACE = "▁"  # SentencePiece's word start: id 5
DEBERTA_CHARS = tuple(chr(i) for i in range(33, 127))  # "!" is id 6, "#" 8, "0" 21, "a" 70
# Weights drawn wider than DeBERTa's 0.02, so that a 32-wide model's scores spread over about ±1
# instead of ±1e-4 and differ visibly between inputs.
INIT_RANGE = 0.5


def deberta_tokenizer() -> DebertaV2Tokenizer:
    """A DeBERTa-v3-like Unigram tokenizer: every word is ``▁`` then its characters."""
    vocab = [(token, 0.0) for token in DEBERTA_SPECIAL] + [(METASPACE, -1.0)]
    vocab += [(char, -2.0) for char in DEBERTA_CHARS]
    return DebertaV2Tokenizer(vocab=vocab, unk_id=DEBERTA_SPECIAL.index("[UNK]"))


def save_tiny_deberta_rm(path: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide one-label ``DebertaV2ForSequenceClassification`` with
    `deberta_tokenizer`, in the config schema of OpenAssistant's DeBERTa-v3 reward models."""
    tokenizer = deberta_tokenizer()
    config = DebertaV2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=512, relative_attention=True, position_buckets=256, pos_att_type=["p2c", "c2p"],
        position_biased_input=False, norm_rel_ebd="layer_norm", share_att_key=True, type_vocab_size=0,
        pooler_hidden_size=32, pooler_dropout=0.0, pad_token_id=PAD, num_labels=1, problem_type="regression",
        id2label={0: "REWARD"}, label2id={"REWARD": 0}, initializer_range=INIT_RANGE,
    )  # fmt: skip
    torch.manual_seed(seed)
    DebertaV2ForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path

"""The embedded default model: a small Llama built from a config, and a character tokenizer.

Nothing is downloaded. The tokenizer is a `tokenizers` BPE model with no merges over printable
ASCII plus newline, which makes it character-level, wrapped as a transformers fast tokenizer so
it saves, loads and batches like any Hub tokenizer.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, PreTrainedTokenizerFast

from lit_align.models.hf import HEADS, load_model

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
CHARACTERS = (*tuple(chr(i) for i in range(32, 127)), "\n")
# A plain-text chat template: "System: …", "User: …" lines, then "Assistant: " and the reply,
# closed by the eos token so a chat model learns where its turn ends (as ChatML's <|im_end|>).
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}{{ 'Assistant: ' + m['content'] + eos_token + '\\n' }}"
    "{% else %}{{ m['role'] | capitalize }}{{ ': ' + m['content'] + '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}"
)


def char_tokenizer(model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """A character-level tokenizer: ids 0-3 are pad, bos, eos, unk; then one id per character.

    Characters outside printable ASCII and newline map to ``<unk>``. It carries `CHAT_TEMPLATE`,
    so conversational data and chat-rendered prompts work with the embedded model.
    """
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()  # characters are joined as they are, without spaces
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    pad, bos, eos, unk = SPECIAL_TOKENS
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=pad,
        bos_token=bos,
        eos_token=eos,
        unk_token=unk,
        model_max_length=model_max_length,
        chat_template=CHAT_TEMPLATE,
    )


def tiny_llama(
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int = 384,
    max_position_embeddings: int = 512,
    tie_word_embeddings: bool = True,
    name_or_path: str | None = None,
    head: str = "lm",
) -> LlamaForCausalLM | LlamaForSequenceClassification:
    """A randomly initialised Llama sized by the arguments (defaults: 0.87M parameters), or,
    with ``name_or_path``, a saved one (a run's ``model/``), whose own config then decides.

    ``head="lm"`` is the causal LM; ``head="score"`` the same trunk with a one-label score head
    (a reward model). Its vocabulary and special-token ids come from ``tokenizer``, so the model
    and the tokenizer always agree. Seed the RNG before calling it for reproducible weights.
    """
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if name_or_path is not None:
        return load_model(name_or_path, tokenizer, head=head)
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size={hidden_size} is not divisible by num_heads={num_heads}")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        num_labels=1,
    )
    return LlamaForCausalLM(config) if head == "lm" else LlamaForSequenceClassification(config)

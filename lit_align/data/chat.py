"""Conversations through the tokenizer's chat template, trained on the assistant's tokens only.

Where each turn starts and ends is taken from the template itself: the text an assistant turn
adds is ``template(messages[:i + 1])`` minus ``template(messages[:i], add_generation_prompt)``,
so any template (ChatML, Llama 3, the tiny tokenizer's) splits the same way, with no
per-model role markers written here. The training spans are those character ranges, mapped to
tokens through the fast tokenizer's offsets.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase

Messages = list[dict[str, str]]


def _template(tokenizer: PreTrainedTokenizerBase, messages: Messages, generation_prompt: bool = False) -> str:
    if not tokenizer.chat_template:
        raise ValueError("conversational rows need a tokenizer with a chat template")
    return tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False)


def assistant_spans(tokenizer: PreTrainedTokenizerBase, messages: Messages) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the ``[start, end)`` character span of every assistant
    turn in it: the turn's content and the end-of-turn token the template closes it with, but
    not the whitespace after that (what follows the end token is never generated)."""
    text = _template(tokenizer, messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _template(tokenizer, messages[:i], generation_prompt=True)
        through = _template(tokenizer, messages[: i + 1])
        if not (through.startswith(before) and text.startswith(through)):
            raise ValueError(f"the chat template renders turn {i} differently in a longer conversation")
        spans.append((len(before), len(before) + len(through[len(before) :].rstrip())))
    return text, spans


def chat_prompt(tokenizer: PreTrainedTokenizerBase, messages: Messages) -> str:
    """The prompt that asks the assistant to reply to ``messages``, without the template's bos
    (the tokenising step adds it)."""
    return _without_bos(tokenizer, _template(tokenizer, messages, generation_prompt=True))


def _without_bos(tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
    bos = tokenizer.bos_token
    return prompt[len(bos) :] if bos and prompt.startswith(bos) else prompt


def render_chat(tokenizer: PreTrainedTokenizerBase, messages: Messages) -> tuple[str, str]:
    """``(prompt, response)`` text of a conversation whose last message is the assistant's:
    every earlier turn with the generation prompt, and the final turn's content.

    The template's bos and final end token are taken off because the tokenising step adds them
    (`encode_prompt_response` puts bos before the prompt and eos after the response); leaving
    them would double them.
    """
    if messages[-1]["role"] != "assistant":
        raise ValueError("the conversation's last message must be the assistant's")
    before = _template(tokenizer, messages[:-1], generation_prompt=True)
    text = _template(tokenizer, messages)
    if not text.startswith(before):
        raise ValueError("the chat template renders the conversation's prefix differently from the prompt")
    prompt, response = _without_bos(tokenizer, before), text[len(before) :].rstrip()
    if tokenizer.eos_token and response.endswith(tokenizer.eos_token):
        response = response[: -len(tokenizer.eos_token)]
    return prompt, response


def encode_conversation(tokenizer: PreTrainedTokenizerBase, messages: Messages, max_length: int) -> dict[str, Any]:
    """One conversation as an SFT row: ``input_ids`` and a per-token ``loss_mask`` that is 1 on
    every assistant turn, ``prompt_len`` (the first trained position) and truncation flags.

    A bos token is put first unless the template wrote one; an eos token is appended, and
    trained, when the template does not close the final assistant turn with it. Conversations
    longer than ``max_length`` lose their end (flagged ``response_truncated``).
    """
    text, spans = assistant_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(encoded["input_ids"])
    mask = [int(any(start <= lo < end for start, end in spans)) for lo, _ in encoded["offset_mapping"]]
    bos = tokenizer.bos_token
    if bos and not text.startswith(bos):
        ids, mask = [tokenizer.bos_token_id, *ids], [0, *mask]
    end = spans[-1][1] if spans else 0
    if messages[-1]["role"] == "assistant" and not text[:end].endswith(tokenizer.eos_token):
        cut = len(ids) - len(encoded["offset_mapping"]) + sum(lo < end for lo, _ in encoded["offset_mapping"])
        ids, mask = [*ids[:cut], tokenizer.eos_token_id, *ids[cut:]], [*mask[:cut], 1, *mask[cut:]]
    trained = [i for i, m in enumerate(mask) if m]
    return {
        "input_ids": ids[:max_length],
        "loss_mask": mask[:max_length],
        "prompt_len": trained[0] if trained else len(ids),
        "prompt_truncated": False,
        "response_truncated": len(ids) > max_length,
    }

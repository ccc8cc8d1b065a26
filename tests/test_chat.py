"""Conversations through chat templates: assistant-only training checked token by token."""

from __future__ import annotations

import json
import re

import pytest
from transformers import AutoTokenizer

from lit_align.data.chat import assistant_spans, chat_prompt, encode_conversation, render_chat
from lit_align.data.files import ChatDataModule
from lit_align.data.formats import FORMATS
from lit_align.data.instruct import InstructDataModule
from lit_align.models.tiny import CHAT_TEMPLATE, char_tokenizer
from lit_align.train import train
from tests.conftest import make_cfg

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "3+3?"},
    {"role": "assistant", "content": "6"},
]
# ChatML (Qwen2.5's turn format) with its markers as plain text, and no eos of its own.
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Llama 3 style: the template writes the bos token itself.
WITH_BOS = "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}{% endfor %}"
WITH_BOS += "{% if add_generation_prompt %}[assistant] {% endif %}"


def _tokens_and_mask(tokenizer, row):
    return list(zip(tokenizer.convert_ids_to_tokens(row["input_ids"]), row["loss_mask"], strict=True))


def _expected(*pieces):
    """(token, trained) per character of each ``(text, trained)`` piece; ``<s>``, ``</s>`` are one token."""
    out = []
    for text, trained in pieces:
        for part in re.split(r"(</?s>)", text):
            tokens = [part] if part in ("<s>", "</s>") else list(part)
            out += [(t, int(trained)) for t in tokens]
    return out


def test_tiny_template_renders_roles_and_closes_assistant_turns_with_eos():
    tokenizer = char_tokenizer()
    text = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert text == "System: Be brief.\nUser: 2+2?\nAssistant: 4</s>\nUser: 3+3?\nAssistant: 6</s>\n"
    assert chat_prompt(tokenizer, CONVERSATION[:2]) == "System: Be brief.\nUser: 2+2?\nAssistant: "
    assert render_chat(tokenizer, CONVERSATION) == (
        "System: Be brief.\nUser: 2+2?\nAssistant: 4</s>\nUser: 3+3?\nAssistant: ",
        "6",  # the eos the template closes the turn with is added back when tokenising
    )
    assert assistant_spans(tokenizer, CONVERSATION)[1] == [
        (40, 45),
        (68, 73),
    ]  # "4</s>", "6</s>": 18 + 11 + 11 chars in


def test_every_assistant_turn_and_only_those_is_trained_token_by_token():
    tokenizer = char_tokenizer()
    row = encode_conversation(tokenizer, CONVERSATION, max_length=512)
    expected = _expected(
        ("<s>", 0), ("System: Be brief.\nUser: 2+2?\nAssistant: ", 0), ("4", 1), ("</s>", 1),
        ("\nUser: 3+3?\nAssistant: ", 0), ("6", 1), ("</s>", 1), ("\n", 0),
    )  # fmt: skip
    assert _tokens_and_mask(tokenizer, row) == expected
    assert row["prompt_len"] == 41 and not row["response_truncated"]
    # Collated beside a longer row, the mask survives padding and pad tokens are never trained.
    longer = encode_conversation(tokenizer, [*CONVERSATION, {"role": "user", "content": "ok"},
                                             {"role": "assistant", "content": "bye"}], max_length=512)  # fmt: skip
    batch = FORMATS["sft"].collate([row, longer], tokenizer.pad_token_id)
    n, p = len(row["input_ids"]), row["prompt_len"]  # the prompt is everything before the first target
    assert batch.loss_mask[0, : n - p].tolist() == row["loss_mask"][p:] and batch.loss_mask[0, n - p :].sum() == 0
    assert batch.loss_mask[1].tolist() == longer["loss_mask"][longer["prompt_len"] :]
    assert batch.num_tokens == n + len(longer["input_ids"])


def test_chatml_without_eos_gets_one_appended_and_trained():
    tokenizer = char_tokenizer()
    tokenizer.chat_template = CHATML
    row = encode_conversation(tokenizer, CONVERSATION[1:3], max_length=512)
    expected = _expected(
        ("<s>", 0), ("<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n", 0),
        ("4<|im_end|>", 1), ("</s>", 1), ("\n", 0),
    )  # fmt: skip
    assert _tokens_and_mask(tokenizer, row) == expected
    assert render_chat(tokenizer, CONVERSATION[1:3])[1] == "4<|im_end|>"


def test_a_template_that_writes_bos_gets_no_second_one():
    tokenizer = char_tokenizer()
    tokenizer.chat_template = WITH_BOS
    row = encode_conversation(tokenizer, CONVERSATION[1:3], max_length=512)
    expected = _expected(("<s>", 0), ("[user] 2+2?", 0), ("</s>", 0), ("[assistant] ", 0), ("4</s>", 1))
    assert _tokens_and_mask(tokenizer, row) == expected
    assert render_chat(tokenizer, CONVERSATION[1:3]) == ("[user] 2+2?</s>[assistant] ", "4")


def test_truncation_cuts_the_end_and_is_flagged():
    tokenizer = char_tokenizer()
    row = encode_conversation(tokenizer, CONVERSATION, max_length=43)
    assert len(row["input_ids"]) == len(row["loss_mask"]) == 43 and row["response_truncated"]
    assert row["loss_mask"][-2:] == [1, 1]  # "4</s>" kept, the second turn cut


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_chat_datamodule_reads_messages_drops_empty_and_refuses_pairs(tmp_path):
    tokenizer = char_tokenizer()
    rows = [{"messages": [{"role": "user", "content": f"{i}+1?"}, {"role": "assistant", "content": str(i + 1)}]}
            for i in range(10)]  # fmt: skip
    rows.append({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]})
    source = _jsonl(tmp_path / "chat.jsonl", rows)
    dm = ChatDataModule(tokenizer, source=source, num_val=2, num_test=2, batch_size=4)
    dm.setup()
    assert len(dm.train_split()) == 6 and dm.stats["data/dropped_rows"] == 1
    micro = next(iter(dm.train_dataloader()))[0]
    ids, mask = micro.response_ids, micro.loss_mask.bool()
    trained = [tokenizer.decode(row[keep]) for row, keep in zip(ids, mask, strict=True)]
    assert all(t.endswith("</s>") and t[:-4].isdigit() for t in trained)
    assert "loss_mask" in dm.splits["validation"].column_names  # held-out: scored by the objective
    with pytest.raises(ValueError, match="data=preference"):
        ChatDataModule(tokenizer, source=source, batch_format="pairs").setup()
    with pytest.raises(ValueError, match=r"bad.jsonl: line 1: missing field 'messages'"):
        ChatDataModule(tokenizer, source=_jsonl(tmp_path / "bad.jsonl", [{"text": "x"}])).setup()


def test_sft_on_a_messages_file_end_to_end(tmp_path):
    rows = [{"messages": [{"role": "system", "content": "Answer with a number."},
                          {"role": "user", "content": f"{i}+1?"}, {"role": "assistant", "content": str(i + 1)}]}
            for i in range(40)]  # fmt: skip
    source = _jsonl(tmp_path / "chat.jsonl", rows)
    summary = train(make_cfg(tmp_path / "run", "data=chat", f"data.source={source}", "data.num_val=4",
                             "data.num_test=4", "data.batch_size=8", "data.eval_batch_size=8"))  # fmt: skip
    assert summary["final"]["val/loss"] < summary["start"]["val/loss"] and "test/loss" in summary["final"]
    exported = AutoTokenizer.from_pretrained(tmp_path / "run" / "model")
    assert exported.chat_template == CHAT_TEMPLATE  # the exported tokenizer keeps its template


def test_instruct_prompts_go_through_the_chat_template():
    tokenizer = char_tokenizer()
    dm = InstructDataModule(tokenizer, num_train=5, num_val=2, num_test=2)
    row = dm.prompt_set()[0]
    assert row["prompt"].startswith("User: ") and row["prompt"].endswith("\nAssistant: ")
    plain = InstructDataModule(tokenizer, num_train=5, num_val=2, num_test=2, chat_template=False,
                               prompt_template="Q: {instruction}\nA: ").prompt_set()[0]  # fmt: skip
    assert plain["prompt"] == f"Q: {row['prompt'][len('User: ') : -len(chr(10) + 'Assistant: ')]}\nA: "

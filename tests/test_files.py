"""Preference and CoT-ranking loaders on fixture files written by the test."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset

from lit_align.data.chat import render_chat
from lit_align.data.files import CotRankingDataModule, PreferenceDataModule
from lit_align.train import train
from tests.conftest import make_cfg

CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


PAIRS = [{"prompt": f"{i}+1=?\n", "chosen": f"#### {i + 1}", "rejected": f"#### {i + 2}"} for i in range(8)]


def test_preference_text_rows_and_bad_rows(tokenizer, tmp_path):
    rows = [*PAIRS, {"prompt": "x", "chosen": "  ", "rejected": "#### 1"}]
    dm = PreferenceDataModule(tokenizer, source=_jsonl(tmp_path / "p.jsonl", rows), batch_format="pairs",
                              num_val=2, num_test=2, batch_size=2)  # fmt: skip
    dm.train_split()  # the training split is encoded when first needed
    assert dm.stats["data/dropped_rows"] == 1 and dm.stats["data/train_rows"] == 4
    assert "chosen_ids" in dm.splits["validation"].column_names  # held-out pairs, scored by the objective
    micro = next(iter(dm.val_dataloader()))[0]
    assert micro.num_responses == 4 and micro.num_prompts == 2  # 2 pairs, each prompt once

    missing = tmp_path / "missing.jsonl"
    _jsonl(missing, [PAIRS[0], {"prompt": "q", "chosen": "a"}])
    with pytest.raises(ValueError, match=rf"{missing}: line 2: missing field 'rejected'"):
        PreferenceDataModule(tokenizer, source=str(missing), batch_format="pairs").setup()
    with pytest.raises(FileNotFoundError, match="data file not found"):
        PreferenceDataModule(tokenizer, source=str(tmp_path / "nope.jsonl")).setup()


def test_preference_parquet_and_sft_on_chosen(tokenizer, tmp_path):
    Dataset.from_list(PAIRS).to_parquet(tmp_path / "p.parquet")
    dm = PreferenceDataModule(tokenizer, source=str(tmp_path / "p.parquet"), batch_format="sft", num_val=1, num_test=1)
    dm.train_split()
    assert dm.stats["data/train_rows"] == 6
    row = dm.train_split()[0]
    assert tokenizer.decode(row["input_ids"][row["prompt_len"] :], skip_special_tokens=True) == "#### 3"


def test_conversational_pairs_train_only_the_assistant_turn(tokenizer, tmp_path):
    tokenizer = tokenizer.__class__.from_pretrained(_save(tokenizer, tmp_path))
    tokenizer.chat_template = CHAT_TEMPLATE
    user = {"role": "user", "content": "2+2?"}
    prompt, response = render_chat(tokenizer, [user, {"role": "assistant", "content": "4"}])
    assert (prompt, response) == ("<user>2+2?\n<assistant>", "4")  # the turn's trailing "\n" is not trained
    rows = [{"chosen": [user, {"role": "assistant", "content": "4"}],
             "rejected": [user, {"role": "assistant", "content": "5"}]}] * 4  # fmt: skip
    dm = PreferenceDataModule(tokenizer, source=_jsonl(tmp_path / "chat.jsonl", rows), batch_format="pairs",
                              num_val=1, num_test=1)  # fmt: skip
    dm.setup()
    row = dm.train_split()[0]
    assert tokenizer.convert_ids_to_tokens(row["chosen_ids"][row["prompt_len"] :]) == ["4", "</s>"]
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        render_chat(tokenizer, rows[0]["chosen"])


def _save(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path / "tok")
    return tmp_path / "tok"


RANKED = [
    {"question": f"{i}+{i}?", "answer": str(2 * i), "solution": f"{i}+{i}={2 * i}\n#### {2 * i}",
     "responses": [{"text": f"#### {2 * i}", "rank": 0}, {"text": f"#### {2 * i + 1}", "rank": 1},
                   {"text": f"#### {2 * i + 3}", "rank": 2}, {"text": "", "rank": 2}]}
    for i in range(6)
]  # fmt: skip


def test_cot_ranking_rows(tokenizer, tmp_path):
    dm = CotRankingDataModule(tokenizer, source=_jsonl(tmp_path / "r.jsonl", RANKED), batch_format="groups",
                              num_val=1, num_test=1, batch_size=2)  # fmt: skip
    dm.train_split()
    assert dm.stats["data/empty_responses"] == 6 and dm.stats["data/train_rows"] == 4
    micro = next(iter(dm.train_dataloader()))[0]
    assert micro.num_prompts == 2 and micro.num_responses == 8  # 3 responses + the reference, twice
    assert micro.rank.tolist()[:4] == [0, 1, 2, 0] and micro.reference.tolist()[:4] == [0, 0, 0, 1]
    assert micro.correct.tolist()[:4] == [1, 0, 0, 1]  # derived from rank 0
    assert "prompt_ids" in dm.splits["validation"].column_names  # answers: scored by generation

    binary = [{"question": "q", "responses": [{"text": "a", "correct": True}, {"text": "b", "correct": False}]}] * 4
    dm = CotRankingDataModule(tokenizer, source=_jsonl(tmp_path / "b.jsonl", binary), batch_format="groups",
                              num_val=1, num_test=1)  # fmt: skip
    dm.setup()
    assert dm.train_split()[0]["rank"] == [0, 1]

    bad = [{"question": "q", "responses": [{"text": "a"}]}]
    with pytest.raises(ValueError, match=r"line 1: response 0 needs 'text' and 'correct' or 'rank'"):
        CotRankingDataModule(tokenizer, source=_jsonl(tmp_path / "bad.jsonl", bad), batch_format="groups").setup()
    with pytest.raises(ValueError, match=r"line 1: missing field 'responses'"):
        CotRankingDataModule(tokenizer, source=_jsonl(tmp_path / "q.jsonl", [{"question": "q"}])).setup()


def test_dpo_on_a_preference_file_end_to_end(tmp_path):
    source = _jsonl(tmp_path / "p.jsonl", PAIRS * 4)
    overrides = [
        "objective=dpo",
        "init=none",
        "data=preference",
        f"data.source={source}",
        "data.num_val=4",
        "data.num_test=4",
    ]
    summary = train(make_cfg(tmp_path / "run", *overrides, "data.batch_size=4", "trainer.max_steps=3"))
    assert {"val/rewards/accuracies", "val/loss"} <= set(summary["start"])
    assert {"val/rewards/margins", "test/rewards/accuracies", "test/loss"} <= set(summary["final"])


def test_aft_on_a_ranking_file_end_to_end(tmp_path):
    source = _jsonl(tmp_path / "r.jsonl", RANKED * 2)
    summary = train(make_cfg(tmp_path / "run", "objective=aft", "rollout=none", "init=none",
                             "objective.feedback=ranking", "data=cot_ranking",
                             f"data.source={source}", "data.num_val=2", "data.num_test=2", "data.batch_size=2",
                             "trainer.max_steps=3"))  # fmt: skip
    assert "val/accuracy" in summary["start"] and "aft/pair_accuracy" in summary["final"]
    assert summary["data"]["data/empty_responses"] == 12

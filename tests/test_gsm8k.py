"""data=gsm8k on a local fixture of GSM8K's schema (question / answer ending "#### n")."""

from __future__ import annotations

import json

import pytest

from lit_align.data.answers import exact_match
from lit_align.data.gsm8k import Gsm8kDataModule
from lit_align.data.rows import BadRow
from lit_align.train import train
from tests.conftest import make_cfg

ROWS = [
    {"question": f"Ann has {n} pens and buys {n + 2} more. How many pens does she have?",
     "answer": f"She has {n} + {n + 2} = <<{n}+{n + 2}={2 * n + 2}>>{2 * n + 2} pens.\n#### {2 * n + 2}"}
    for n in range(1, 13)
]  # fmt: skip


def _fixture(tmp_path, rows=ROWS):
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_sft_rows_held_out_answers_and_the_prompt_set(tmp_path, tokenizer):
    data = Gsm8kDataModule(tokenizer, source=_fixture(tmp_path), num_val=2, num_test=2)
    data.setup()
    assert data.splits["validation"]["answer"] == ["4", "6"] and data.splits["test"]["answer"] == ["8", "10"]
    raw = data._raw_train[0]
    assert raw["prompt"] == "Question: Ann has 5 pens and buys 7 more. How many pens does she have?\nAnswer: "
    assert raw["response"] == "She has 5 + 7 = 12 pens.\n#### 12"  # calculator annotation dropped
    assert exact_match(raw["response"], "12") == 1.0
    prompts = data.prompt_set()
    assert len(prompts) == 8 and prompts[0]["answer"] == "12" and set(prompts.column_names) >= {"prompt", "answer"}


def test_an_answer_without_a_final_number_is_a_bad_row(tmp_path, tokenizer):
    rows = [*ROWS[:6], {"question": "How many?", "answer": "Three."}, *ROWS[6:]]
    with pytest.raises(BadRow, match=r"gsm8k.jsonl: line 7: 'answer' must end with '#### <final answer>'"):
        Gsm8kDataModule(tokenizer, source=_fixture(tmp_path, rows), num_val=2, num_test=2).setup()
    data = Gsm8kDataModule(tokenizer, source=_fixture(tmp_path, rows), num_val=2, num_test=2, on_bad_row="skip")
    data.setup()
    assert data.stats["data/dropped_rows/wrong_type"] == 1 and len(data._raw_train) == 8


def test_offline_pairs_are_refused_with_the_way_out(tmp_path, tokenizer):
    data = Gsm8kDataModule(tokenizer, batch_format="pairs", source=_fixture(tmp_path), num_val=2, num_test=2)
    with pytest.raises(ValueError, match=r"data=gsm8k has SFT rows only .* rollout=online"):
        data.train_split()


def test_sft_and_rloo_train_on_it(tmp_path):
    source = _fixture(tmp_path)
    data = ["data=gsm8k", f"data.source={source}", "data.num_val=2", "data.num_test=2", "data.batch_size=4",
            "data.eval_batch_size=4"]  # fmt: skip
    sft = train(make_cfg(tmp_path / "sft", *data, "trainer.max_steps=2", "eval.before_train=false"))
    assert sft["steps"] == 2 and "test/accuracy" in sft["final"]
    rl = ["objective=rloo", "init=none", "rollout.num_prompts=2", "rollout.num_samples=2", "rollout.every_n_epochs=1"]
    rloo = train(make_cfg(tmp_path / "rloo", *data, *rl, "trainer.max_steps=2", "eval.before_train=false"))
    assert rloo["steps"] == 2 and rloo["final"]["rollout/buffer_rows"] == 2  # prompts, each with its 2 samples

"""Hub datasets offline: `load_dataset` is patched where `lit_align.data.rows` calls it, and the
rows come from fixtures in tests/fixtures/ written in the Hub datasets' schemas (openai/gsm8k,
HuggingFaceH4/ultrafeedback_binarized, HuggingFaceH4/ultrachat_200k). No test touches the network.

ultrafeedback_binarized.jsonl has 14 lines: 11 good pairs, row 5 whose chosen and rejected answer
different prompts (wrong_type), row 8 a tie (score 7.0 both), row 12 a line cut short
(malformed_json), and row 13 a two-turn conversation.
"""

from __future__ import annotations

import json
from pathlib import Path
from unittest.mock import call, patch

import pytest

from lit_align.config import ConfigError
from lit_align.data.files import ChatDataModule, PreferenceDataModule
from lit_align.data.gsm8k import Gsm8kDataModule
from lit_align.data.rows import BadRow, load_rows
from lit_align.train import train
from tests.conftest import make_cfg

FIXTURES = Path(__file__).parent / "fixtures"
GSM8K = FIXTURES / "gsm8k.jsonl"
ULTRAFEEDBACK = FIXTURES / "ultrafeedback_binarized.jsonl"
ULTRACHAT = FIXTURES / "ultrachat_200k.jsonl"
UF_HUB = "HuggingFaceH4/ultrafeedback_binarized"


def _read(path: Path) -> list[dict]:
    """The rows of a fixture that parse, as a Hub dataset would hold them."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _hub(splits: dict[str, list[dict]]):
    """A stand-in for `load_dataset` serving ``splits`` by name."""
    return patch("lit_align.data.rows.load_dataset", side_effect=lambda path, name, split: splits[split])


# -- data.subset: load_dataset's name ------------------------------------------------------------


def test_subset_and_split_reach_load_dataset_for_hub_names_only():
    rows = _read(GSM8K)
    with patch("lit_align.data.rows.load_dataset", return_value=rows[:3]) as load:
        read = list(load_rows("openai/gsm8k", "test", subset="main"))
        load.assert_called_once_with("openai/gsm8k", name="main", split="test")
        assert [(source, i) for source, i, _ in read] == [("openai/gsm8k", 0), ("openai/gsm8k", 1), ("openai/gsm8k", 2)]
        assert read[2][2] == rows[2]
        assert len(list(load_rows(str(GSM8K), "train", subset="main"))) == 12  # a local file: read here
        load.assert_called_once()


def test_gsm8k_from_the_hub_with_subset_main(tokenizer):
    rows = _read(GSM8K)
    with _hub({"train": rows[:8], "test": rows[8:]}) as load:
        data = Gsm8kDataModule(tokenizer, source="openai/gsm8k", subset="main", eval_source="openai/gsm8k",
                               num_val=2, num_test=2)  # fmt: skip
        data.setup()
    assert load.call_args_list == [
        call("openai/gsm8k", name="main", split="train"),
        call("openai/gsm8k", name="main", split="test"),  # the eval source shares the subset
    ]
    assert len(data._raw_train) == 8
    assert data.splits["validation"]["answer"] == ["9", "60"] and data.splits["test"]["answer"] == ["7", "7"]
    assert data._raw_train[3] == {
        "prompt": "Question: A farmer has 48 apples and packs them into bags of 6. How many bags does he fill?\n"
        "Answer: ",
        "response": "He fills 48 / 6 = 8 bags.\n#### 8",
    }


def test_a_missing_config_name_names_data_subset_in_one_line(tokenizer):
    missing = ValueError(
        "Config name is missing.\nPlease pick one among the available configs: ['main', 'socratic']"
        "\nExample of usage:\n\t`load_dataset('openai/gsm8k', 'main')`"
    )
    with patch("lit_align.data.rows.load_dataset", side_effect=missing), pytest.raises(ConfigError) as error:
        Gsm8kDataModule(tokenizer, source="openai/gsm8k").setup()
    assert str(error.value) == (
        "openai/gsm8k (subset=None, split=train): Config name is missing. Please pick one among the "
        "available configs: ['main', 'socratic']; data.subset picks the config (load_dataset's name), "
        "data.split and data.eval_split the splits"
    )
    other = ValueError("something else")  # any other error of the library is its own
    with patch("lit_align.data.rows.load_dataset", side_effect=other), pytest.raises(ValueError) as error:
        Gsm8kDataModule(tokenizer, source="openai/gsm8k").setup()
    assert error.value is other


def test_a_subset_with_only_local_files_is_refused(tokenizer):
    with pytest.raises(ValueError) as error:
        Gsm8kDataModule(tokenizer, source=str(GSM8K), subset="main")
    assert str(error.value) == (
        f"subset='main' picks a Hub dataset's config (load_dataset's name), but the data is local ({GSM8K}): "
        "remove subset"
    )
    Gsm8kDataModule(tokenizer, source=str(GSM8K), subset="main", eval_source="openai/gsm8k")  # for the Hub eval


# -- data=ultrafeedback ----------------------------------------------------------------------------


def test_ultrafeedback_pairs_share_their_prompt_and_bad_rows_and_ties_are_counted(tokenizer):
    data = PreferenceDataModule(tokenizer, source=str(ULTRAFEEDBACK), batch_format="pairs", drop_ties=True,
                                on_bad_row="skip", num_val=2, num_test=2, batch_size=2)  # fmt: skip
    data.train_split()
    assert data.stats == {
        "data/dropped_rows": 3,
        "data/dropped_rows/wrong_type": 1,  # row 5: two prompts
        "data/dropped_rows/tie": 1,  # row 8
        "data/dropped_rows/malformed_json": 1,  # row 12
        "data/train_rows": 7,  # 14 - 3, less 4 held out
        "data/prompt_truncated": 0,
        "data/response_truncated": 0,
    }
    assert data._raw_train[0] == {
        "prompt": "User: Give me one tip for sleeping better.\nAssistant: ",
        "chosen": "Keep a regular schedule: go to bed and wake up at the same time every day, even on weekends.",
        "rejected": "Drink a cup of coffee before bed.",
    }
    assert data._raw_train[6]["prompt"] == (  # row 13: the shared earlier turns are the prompt
        "User: Why is the sky blue?\nAssistant: Air molecules scatter short blue wavelengths of sunlight more "
        "than red ones.</s>\nUser: And why are sunsets red?\nAssistant: "
    )
    assert len(data.splits["validation"]) == 2 and "chosen_ids" in data.splits["validation"].column_names
    pair = data.splits["validation"][0]  # row 0, scored by the objective
    n = pair["prompt_len"]
    assert tokenizer.decode(pair["rejected_ids"][:n]) == "<s>User: What is the capital of Australia?\nAssistant: "
    assert tokenizer.decode(pair["chosen_ids"][n:]) == "The capital of Australia is Canberra.</s>"


def test_ultrafeedback_bad_rows_fail_naming_the_row_and_ties_stay_by_default(tokenizer):
    with pytest.raises(BadRow) as error:
        PreferenceDataModule(tokenizer, source=str(ULTRAFEEDBACK), batch_format="pairs").setup()
    assert str(error.value) == (
        f"{ULTRAFEEDBACK}: line 6: 'chosen' and 'rejected' must share the turns before the last; "
        "data.on_bad_row=skip skips such rows"
    )
    data = PreferenceDataModule(tokenizer, source=str(ULTRAFEEDBACK), batch_format="pairs", on_bad_row="skip",
                                num_val=2, num_test=2)  # fmt: skip
    data.setup()
    assert len(data._raw_train) == 8 and "data/dropped_rows/tie" not in data.stats  # drop_ties is off
    no_scores = [{k: v for k, v in row.items() if k != "score_rejected"} for row in _read(ULTRAFEEDBACK)[:5]]
    with _hub({"train": no_scores}), pytest.raises(BadRow, match=r"row 0 \(0-based\): missing field 'score_rejected'"):
        PreferenceDataModule(tokenizer, source=UF_HUB, batch_format="pairs", drop_ties=True).setup()


def test_sft_on_ultrafeedback_trains_the_chosen_response_and_keeps_ties(tokenizer):
    data = PreferenceDataModule(tokenizer, source=str(ULTRAFEEDBACK), batch_format="sft", drop_ties=True,
                                on_bad_row="skip", num_val=2, num_test=2)  # fmt: skip
    data.setup()
    assert data.stats["data/dropped_rows"] == 2 and len(data._raw_train) == 8  # row 8, a tie, kept
    assert data._raw_train[3] == {
        "prompt": "User: Suggest a name for a pet goldfish.\nAssistant: ",
        "response": "How about Bubbles?",
    }


def test_dpo_on_an_ultrafeedback_file_end_to_end(tmp_path):
    summary = train(make_cfg(tmp_path / "run", "objective=dpo", "init=none", "data=ultrafeedback",
                             f"data.source={ULTRAFEEDBACK}", "data.eval_source=null", "data.on_bad_row=skip",
                             "data.num_val=2", "data.num_test=2", "data.batch_size=4", "data.eval_batch_size=4",
                             "trainer.max_steps=2"))  # fmt: skip
    assert summary["steps"] == 2
    assert summary["data"]["data/train_rows"] == 7 and summary["data"]["data/dropped_rows/tie"] == 1
    assert {"val/rewards/accuracies", "val/loss"} <= set(summary["start"])
    assert {"val/rewards/margins", "test/rewards/accuracies", "test/loss"} <= set(summary["final"])


def test_the_shipped_ultrafeedback_config_reads_its_hub_splits(tmp_path):
    hub = [row for i, row in enumerate(_read(ULTRAFEEDBACK)) if i != 5]  # the Hub rows parse; row 5 has two prompts
    with _hub({"train_prefs": hub[4:], "test_prefs": hub[:4]}) as load:
        summary = train(make_cfg(tmp_path / "run", "data=ultrafeedback", "data.num_val=2", "data.num_test=2",
                                 "data.batch_size=4", "data.eval_batch_size=4", "trainer.max_steps=2"))  # fmt: skip
    assert load.call_args_list == [call(UF_HUB, name=None, split=s) for s in ("train_prefs", "test_prefs")]
    assert summary["steps"] == 2 and summary["data"]["data/train_rows"] == 8  # SFT on chosen: the tie kept
    assert "val/loss" in summary["start"] and "test/loss" in summary["final"]


# -- data=chat on an ultrachat_200k-schema file ----------------------------------------------------


def test_chat_reads_ultrachat_messages_and_ignores_prompt_and_prompt_id(tokenizer):
    data = ChatDataModule(tokenizer, source=str(ULTRACHAT), num_val=2, num_test=2)
    data.train_split()
    assert data.stats == {"data/dropped_rows": 1, "data/dropped_rows/empty": 1, "data/train_rows": 5,
                          "data/prompt_truncated": 0, "data/response_truncated": 0}  # fmt: skip
    assert data._raw_train.column_names == ["messages"]
    row = data.train_split()[0]  # conversation 4: two assistant turns, both trained
    ids, mask = row["input_ids"], row["loss_mask"]
    assert tokenizer.decode(ids) == (
        "<s>User: Can you recommend a book about habits?\nAssistant: Try 'Atomic Habits' by James Clear: it is "
        "short and practical.</s>\nUser: Is there an audiobook?\nAssistant: Yes, it is available as an audiobook "
        "read by the author.</s>\n"
    )
    assert tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m]) == (
        "Try 'Atomic Habits' by James Clear: it is short and practical.</s>"
        "Yes, it is available as an audiobook read by the author.</s>"
    )

"""Messy files: every class of bad row fails naming the file and row, or is skipped and counted
with the good rows kept exactly as written. Fixtures are written by the tests."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lit_align.data.files import ChatDataModule, CotRankingDataModule, PreferenceDataModule
from lit_align.data.rows import BadRow, DataError

LIMITS = {"max_prompt_length": 16, "max_length": 40}  # the char tokenizer: one token per character
MODULES = {"preference": PreferenceDataModule, "chat": ChatDataModule, "cot_ranking": CotRankingDataModule}
FORMATS = {"preference": "pairs", "chat": "sft", "cot_ranking": "groups"}
GOOD = {
    "preference": [{"prompt": f"{i}+1=?\n", "chosen": f"#### {i + 1}", "rejected": f"#### {i + 2}"} for i in range(6)],
    "chat": [
        {"messages": [{"role": "user", "content": f"{i}+1?"}, {"role": "assistant", "content": str(i + 1)}]}
        for i in range(6)
    ],
    "cot_ranking": [
        {"question": f"{i}+1?", "responses": [{"text": f"#### {i + 1}", "rank": 0}, {"text": "#### 0", "rank": 1}]}
        for i in range(6)
    ],
}
BAD_AT = 3  # the bad line sits between GOOD[:3] and GOOD[3:], so its row index is 3: line 4


def _row(kind: str, **fields) -> bytes:
    return json.dumps({**GOOD[kind][0], **fields}).encode()


def _chat(*turns: tuple[str, str]) -> bytes:
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in turns]}).encode()


# (id, datamodule, the bad line, its class, what the message says about it)
CASES = [
    ("json-truncated", "preference", b'{"prompt": "q", "chosen": "a", ', "malformed_json", "not valid JSON"),
    ("json-unquoted", "chat", b"{messages: []}", "malformed_json", "not valid JSON"),
    ("latin1", "preference", b'{"prompt": "caf\xe9?", "chosen": "a", "rejected": "b"}', "not_utf8", "not UTF-8"),
    ("latin1", "cot_ranking", b'{"question": "\xff", "responses": []}', "not_utf8", "not UTF-8 .byte 0xff"),
    ("missing-rejected", "preference", _row("preference", rejected=None), "missing_field", "missing field 'rejected'"),
    ("row-not-object", "preference", b'["q", "a", "b"]', "wrong_type", "a row must be a JSON object, got list"),
    ("chosen-number", "preference", _row("preference", chosen=3), "wrong_type", "'chosen' must be text, got int 3"),
    ("chosen-dict", "preference", _row("preference", chosen={"text": "a"}), "wrong_type", "'chosen' must be text"),
    (
        "chosen-messages-rejected-text",
        "preference",
        _row("preference", chosen=[{"role": "assistant", "content": "4"}]),
        "wrong_type",
        "'rejected' must be a list of .role, content., got str",
    ),
    ("messages-text", "chat", b'{"messages": "hi"}', "wrong_type", "'messages' must be a list of .role, content."),
    (
        "message-without-content",
        "chat",
        b'{"messages": [{"role": "user", "text": "hi"}]}',
        "wrong_type",
        "'messages' message 0 must be .role: text, content: text.",
    ),
    (
        "responses-text",
        "cot_ranking",
        _row("cot_ranking", responses="#### 2"),
        "wrong_type",
        "'responses' must be a list",
    ),
    (
        "rank-text",
        "cot_ranking",
        _row("cot_ranking", responses=[{"text": "#### 1", "rank": "first"}]),
        "wrong_type",
        "response 0: 'rank' must be an integer, got str",
    ),
    (
        "correct-text",
        "cot_ranking",
        _row("cot_ranking", responses=[{"text": "#### 1", "correct": "yes"}]),
        "wrong_type",
        "response 0: 'correct' must be true or false, got str",
    ),
    ("empty-prompt", "preference", _row("preference", prompt=""), "empty", "'prompt' is empty"),
    ("blank-chosen", "preference", _row("preference", chosen="  "), "empty", "'chosen' is empty"),
    (
        "empty-assistant-turn",
        "chat",
        _chat(("user", "hi"), ("assistant", "1"), ("user", "and?"), ("assistant", "")),
        "empty",
        "assistant turn 3 is empty",
    ),
    (
        "empty-response",
        "cot_ranking",
        _row("cot_ranking", responses=[{"text": "", "rank": 0}]),
        "empty",
        "(response 0|every response) is empty",  # a group is skipped when none is left
    ),
    (
        "long-prompt",
        "preference",
        _row("preference", prompt="1+" * 10),
        "too_long",
        "prompt longer than max_prompt_length=16 tokens",
    ),
    (
        "long-response",
        "preference",
        _row("preference", rejected="#" * 40),
        "too_long",
        "sequence longer than max_length=40 tokens",
    ),
    (
        "long-conversation",
        "chat",
        _chat(("user", "hi"), ("assistant", "9" * 30)),
        "too_long",
        "sequence longer than max_length=40 tokens",
    ),
    (
        "long-chain",
        "cot_ranking",
        _row("cot_ranking", responses=[{"text": "1+" * 20, "correct": True}]),
        "too_long",
        "sequence longer than max_length=40 tokens",
    ),
]
IDS = [f"{reason}-{kind}-{name}" for name, kind, _, reason, _ in CASES]
OPTION = {"empty": "on_empty", "too_long": "on_long"}  # the rest are on_bad_row's


def _write(path: Path, kind: str, bad: bytes | None = None) -> str:
    lines = [json.dumps(r).encode() for r in GOOD[kind]]
    if bad is not None:
        lines.insert(BAD_AT, bad)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


def _datamodule(tokenizer, kind: str, source: str, **options):
    settings = {"batch_format": FORMATS[kind], "num_val": 1, "num_test": 1, "batch_size": 2, **LIMITS, **options}
    return MODULES[kind](tokenizer, source=source, **settings)


def _texts(kind: str, row: dict) -> object:
    """What a row says, as written in the file or as the datamodule normalised it."""
    if kind == "chat":
        return row["messages"]
    if kind == "cot_ranking":
        question = row.get("question", row.get("prompt", "").removesuffix("\n"))
        return question, [(r["text"], r["rank"]) for r in row["responses"]]
    return row["prompt"], row["chosen"], row["rejected"]


@pytest.mark.parametrize("name,kind,bad,reason,message", CASES, ids=IDS)
def test_bad_row_fails_naming_the_file_and_row(tokenizer, tmp_path, name, kind, bad, reason, message):
    source = _write(tmp_path / f"{kind}.jsonl", kind, bad)
    dm = _datamodule(tokenizer, kind, source, **{OPTION.get(reason, "on_bad_row"): "error"})
    with pytest.raises(ValueError, match=rf"^{re.escape(source)}: line {BAD_AT + 1}: {message}") as error:
        dm.setup()
    assert "\n" not in str(error.value) and error.value.reason == reason
    assert f"data.{OPTION.get(reason, 'on_bad_row')}=skip" in str(error.value)  # says how to go on


@pytest.mark.parametrize("name,kind,bad,reason,message", CASES, ids=IDS)
def test_bad_row_is_skipped_counted_and_the_good_rows_kept_intact(
    tokenizer, tmp_path, name, kind, bad, reason, message
):
    source = _write(tmp_path / f"{kind}.jsonl", kind, bad)
    dm = _datamodule(tokenizer, kind, source, **{OPTION.get(reason, "on_bad_row"): "skip"})
    with pytest.warns(
        UserWarning, match=rf"skipped 1 rows .*\({reason} 1\); the first: .*line {BAD_AT + 1}: {message}"
    ):
        splits = dm.build_splits()
    assert dm.stats == {"data/dropped_rows": 1, f"data/dropped_rows/{reason}": 1}
    kept = [*splits["validation"], *splits["test"], *splits["train"]]  # the file's order: held out first
    assert [_texts(kind, r) for r in kept] == [_texts(kind, r) for r in GOOD[kind]]


def test_defaults_fail_on_broken_and_long_rows_and_skip_empty_ones(tokenizer, tmp_path):
    _, kind, bad, _, message = CASES[0]  # malformed JSON
    with pytest.raises(ValueError, match=message):
        _datamodule(tokenizer, kind, _write(tmp_path / "a.jsonl", kind, bad)).setup()
    with pytest.raises(ValueError, match="max_prompt_length=16"):
        _datamodule(tokenizer, kind, _write(tmp_path / "b.jsonl", kind, _row(kind, prompt="1+" * 10))).setup()
    dm = _datamodule(tokenizer, kind, _write(tmp_path / "c.jsonl", kind, _row(kind, prompt="")))
    with pytest.warns(UserWarning, match="skipped 1 rows"):
        dm.setup()
    assert dm.stats["data/dropped_rows/empty"] == 1


def test_truncation_is_still_there_when_asked_for(tokenizer, tmp_path):
    source = _write(tmp_path / "p.jsonl", "preference", _row("preference", prompt="1+" * 10, chosen="#" * 40))
    dm = _datamodule(tokenizer, "preference", source, on_long="truncate", num_val=0, num_test=0)
    dm.setup()
    assert len(dm.train_split()) == 7 and dm.stats["data/dropped_rows"] == 0
    assert dm.stats["data/prompt_truncated"] == dm.stats["data/response_truncated"] == 1
    assert max(len(r["chosen_ids"]) for r in dm.train_split()) == LIMITS["max_length"]


def test_skipped_rows_are_named_by_their_own_file_in_a_folder(tokenizer, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    _write(folder / "a.jsonl", "preference")
    second = _write(folder / "b.jsonl", "preference", b"{")
    with pytest.raises(ValueError, match=rf"^{re.escape(second)}: line {BAD_AT + 1}: not valid JSON"):
        _datamodule(tokenizer, "preference", str(folder)).setup()
    dm = _datamodule(tokenizer, "preference", str(folder), on_bad_row="skip")
    with pytest.warns(UserWarning, match="malformed_json 1"):
        assert len(dm.build_splits()["train"]) == 2 * len(GOOD["preference"]) - 2


def test_blank_lines_crlf_and_a_byte_order_mark_are_read(tokenizer, tmp_path):
    lines = [json.dumps(r).encode() for r in GOOD["preference"]]
    path = tmp_path / "p.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join([*lines[:2], b"", b"{", *lines[2:]]) + b"\r\n\r\n")
    with pytest.raises(ValueError, match=r"p\.jsonl: line 4: not valid JSON"):  # the line's 1-based number
        _datamodule(tokenizer, "preference", str(path)).setup()
    dm = _datamodule(tokenizer, "preference", str(path), on_bad_row="skip", num_val=0, num_test=0)
    with pytest.warns(UserWarning):
        assert [_texts("preference", r) for r in dm.build_splits()["train"]] == [
            _texts("preference", r) for r in GOOD["preference"]
        ]


def test_a_json_array_file_is_read_and_its_bad_rows_named(tokenizer, tmp_path):
    good = tmp_path / "p.json"
    good.write_text(json.dumps(GOOD["preference"], indent=2))
    dm = _datamodule(tokenizer, "preference", str(good), num_val=0, num_test=0)
    assert [_texts("preference", r) for r in dm.build_splits()["train"]] == [
        _texts("preference", r) for r in GOOD["preference"]
    ]
    wrong = tmp_path / "w.json"
    wrong.write_text(json.dumps([*GOOD["preference"][:2], {**GOOD["preference"][2], "chosen": 7}]))
    with pytest.raises(ValueError, match=rf"{re.escape(str(wrong))}: row 2 \(0-based\): 'chosen' must be text"):
        _datamodule(tokenizer, "preference", str(wrong)).setup()
    broken = tmp_path / "b.json"
    broken.write_text(json.dumps(GOOD["preference"], indent=2)[:-3])
    with pytest.raises(ValueError, match=r"b\.json: line \d+: not valid JSON .*cannot be skipped"):
        _datamodule(tokenizer, "preference", str(broken), on_bad_row="skip").setup()


def test_a_ranked_group_loses_only_its_empty_chains_and_sft_needs_a_correct_one(tokenizer, tmp_path):
    rows = [json.dumps(r).encode() for r in GOOD["cot_ranking"]]
    rows[1] = _row("cot_ranking", responses=[{"text": "#### 1", "rank": 1.0}, {"text": " ", "rank": 0}])
    rows[2] = _row("cot_ranking", responses=[{"text": "", "rank": 0}, {"text": "1+" * 20, "rank": 1}])
    (tmp_path / "r.jsonl").write_bytes(b"\n".join(rows))
    dm = _datamodule(tokenizer, "cot_ranking", str(tmp_path / "r.jsonl"), on_long="skip", num_val=0, num_test=0)
    with pytest.warns(UserWarning, match="too_long 1"):
        groups = dm.build_splits()["train"]
    assert groups[1]["responses"] == [{"text": "#### 1", "correct": False, "rank": 1, "reference": False}]
    assert len(groups) == 5 and dm.stats["data/empty_responses"] == 1  # not the skipped row's empty chain
    dm = _datamodule(tokenizer, "cot_ranking", str(tmp_path / "r.jsonl"), batch_format="sft", on_long="skip")
    with pytest.warns(UserWarning, match=r"\(no_correct_response 2\).*line 2: no correct response"):
        dm.build_splits()
    assert dm.stats["data/dropped_rows"] == 2


@pytest.mark.parametrize("option", ["on_bad_row", "on_empty", "on_long"])
def test_an_unknown_option_value_is_refused(tokenizer, tmp_path, option):
    with pytest.raises(ValueError, match=rf"{option} must be one of \('"):
        PreferenceDataModule(tokenizer, source=str(tmp_path / "p.jsonl"), **{option: "ignore"})


def test_the_cli_reports_a_bad_row_in_one_line(tmp_path):
    source = tmp_path / "pairs.jsonl"
    good = json.dumps({"prompt": "1+1=", "chosen": "2", "rejected": "3"})
    source.write_text("\n".join([good] * 4 + ['{"prompt": "1+1=", "chosen": "2" "rejected": "3"}']) + "\n")
    out = subprocess.run(
        [sys.executable, "-m", "lit_align", "objective=dpo", "init=none", "data=preference", f"data.source={source}",
         "data.num_val=1", "data.num_test=1", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        f"lit_align: {source}: line 5: not valid JSON (Expecting ',' delimiter at column 34); "
        "data.on_bad_row=skip skips such rows"
    )


# (id, the file data.source names, its content, the error, what its one line says)
SOURCES = [
    ("empty-jsonl", "p.jsonl", b"", DataError, r"p\.jsonl: the file is empty \(no rows\)$"),
    ("blank-json", "p.json", b"\xef\xbb\xbf\n  \n", DataError, r"p\.json: the file is empty \(no rows\)$"),
    ("missing-file", None, None, FileNotFoundError, r"^data file not found: .*nowhere\.jsonl$"),
    (
        "broken-array",
        "p.json",
        b'[{"prompt": "1+1=", "chosen": "2", "rejected": "3"},\n {"prompt": 1+1}]',
        DataError,
        r"p\.json: line 2: not valid JSON \(Expecting ',' delimiter\); a JSON array is read whole",
    ),
    (
        "duplicate-key-in-array",
        "p.json",
        b'[{"prompt": "1+1=", "chosen": "2", "rejected": "3", "chosen": "3"}]',
        DataError,
        r"p\.json: not valid JSON \(duplicate key 'chosen'\)",
    ),
    ("offline-hub-name", "org/no-such-dataset", None, DataError, r"^org/no-such-dataset: no such local file or folder"),
]


@pytest.mark.parametrize("name,file,content,error,message", SOURCES, ids=[s[0] for s in SOURCES])
def test_a_source_that_cannot_be_read_fails_in_one_line(tokenizer, tmp_path, name, file, content, error, message):
    source = str(tmp_path / "nowhere.jsonl") if file is None else file
    if content is not None:
        source = str(tmp_path / file)
        Path(source).write_bytes(content)
    with pytest.raises(error, match=message) as info:
        _datamodule(tokenizer, "preference", source).setup()
    assert "\n" not in str(info.value)


def test_an_upper_case_suffix_is_a_local_file(tokenizer, tmp_path):
    source = _write(tmp_path / "PAIRS.JSONL", "preference")
    dm = _datamodule(tokenizer, "preference", source, num_val=0, num_test=0)
    assert len(dm.build_splits()["train"]) == len(GOOD["preference"])


def test_identical_pairs_and_duplicate_keys_are_counted_not_trained_on(tokenizer, tmp_path):
    same = _row("preference", chosen="#### 9", rejected="#### 9")
    twice = b'{"prompt": "1+1=", "chosen": "#### 2", "rejected": "#### 3", "rejected": "#### 2"}'
    lines = [json.dumps(r).encode() for r in GOOD["preference"]]
    (tmp_path / "p.jsonl").write_bytes(b"\n".join([*lines[:2], same, twice, *lines[2:]]) + b"\n")
    dm = _datamodule(tokenizer, "preference", str(tmp_path / "p.jsonl"), on_bad_row="skip", num_val=0, num_test=0)
    with pytest.warns(UserWarning, match=r"\(identical_pair 1, malformed_json 1\); the first: .*line 3: 'chosen' is"):
        train = dm.build_splits()["train"]
    assert [_texts("preference", r) for r in train] == [_texts("preference", r) for r in GOOD["preference"]]
    assert dm.stats == {
        "data/dropped_rows": 2, "data/dropped_rows/identical_pair": 1, "data/dropped_rows/malformed_json": 1,
    }  # fmt: skip
    with pytest.raises(BadRow, match=r"p\.jsonl: line 4: not valid JSON \(duplicate key 'rejected'\)"):
        _datamodule(tokenizer, "preference", str(tmp_path / "p.jsonl")).setup()


def test_files_a_folder_does_not_read_are_named(tokenizer, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    _write(folder / "a.jsonl", "preference")
    (folder / "b.csv").write_text("prompt,chosen,rejected\n")
    (folder / "notes.txt").write_text("")
    (folder / ".hidden").write_text("")
    dm = _datamodule(tokenizer, "preference", str(folder), num_val=0, num_test=0)
    with pytest.warns(
        UserWarning, match=r"ignored 2 entries that are not .json, .jsonl or .parquet files: b.csv, notes"
    ):
        assert len(dm.build_splits()["train"]) == len(GOOD["preference"])


@pytest.mark.slow  # a CLI subprocess run of 15-35 s: the default suite keeps under 10 minutes
def test_the_cli_reports_an_empty_or_missing_data_file_in_one_line(tmp_path):
    empty = tmp_path / "pairs.jsonl"
    empty.write_text("")
    gone = tmp_path / "gone.jsonl"
    for source, last in ((empty, f"lit_align: {empty}: the file is empty (no rows)"),
                         (gone, f"lit_align: data file not found: {gone}")):  # fmt: skip
        out = subprocess.run(
            [sys.executable, "-m", "lit_align", "objective=dpo", "data=preference", f"data.source={source}",
             f"hydra.run.dir={tmp_path / 'run'}", "eval.before_train=false"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
        assert out.stderr.strip().splitlines()[-1] == last

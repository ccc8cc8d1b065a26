"""Reading rows from local files or the Hub, and checking their fields, with every problem
named by file and row (see `lit_align.data.files` for what becomes of a bad row)."""

from __future__ import annotations

import codecs
import json
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from datasets import load_dataset
from datasets.exceptions import DatasetNotFoundError

from lit_align.data.chat import Messages
from lit_align.errors import ConfigError

Row = dict[str, Any]

_SUFFIXES = (".json", ".jsonl", ".parquet")


class BadRow(ValueError):
    """A row that cannot be used as written; ``reason`` is its class (see the module docstring)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class DataError(ValueError):
    """A data source that cannot be read at all (missing, empty, unparseable, not reachable);
    reported in one line."""


def row_name(source: str, index: int) -> str:
    """Where a row is: in a JSON Lines file its 1-based line (as editors, ``jq`` and Python's
    JSON errors count), in a JSON array, a Parquet file or a Hub dataset its 0-based index."""
    return f"line {index}" if source.lower().endswith(".jsonl") else f"row {index} (0-based)"


def bad_row(source: str, index: int, reason: str, what: str) -> BadRow:
    """A `BadRow` of class ``reason`` whose message names ``source`` and where the row is."""
    return BadRow(reason, f"{source}: {row_name(source, index)}: {what}")


def wrong_type(source: str, index: int, what: str, value: Any) -> BadRow:
    """A ``wrong_type`` row: ``what`` it needs, then the value's type and a short repr."""
    text = repr(value)
    return bad_row(source, index, "wrong_type", f"{what}, got {type(value).__name__} {text[:40]}")


def is_local(source: str) -> bool:
    """Whether ``source`` names a local ``.json``/``.jsonl``/``.parquet`` file or a folder
    (which `load_rows` reads itself) rather than a Hub dataset."""
    path = Path(source).expanduser()
    return path.suffix.lower() in _SUFFIXES or path.is_dir()


def load_rows(source: str, split: str, subset: str | None = None) -> Iterator[tuple[str, int, Row | BadRow]]:
    """Every row of ``source`` as ``(file, index, row)``: the file it came from (the dataset name
    for the Hub), where it is in that file (`row_name`), and the row, or a `BadRow` for a line that
    could not be read, for the caller to fail on or skip. ``split`` and ``subset`` (the
    dataset's config, ``load_dataset``'s ``name``) apply to Hub datasets only."""
    path = Path(source).expanduser()
    if path.suffix.lower() in _SUFFIXES:
        if not path.is_file():
            raise FileNotFoundError(f"data file not found: {source}")
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in _SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no .json, .jsonl or .parquet file in {source}")
        ignored = sorted(p.name for p in path.iterdir() if p not in files and not p.name.startswith("."))
        if ignored:
            shown = ", ".join(ignored[:3]) + (f" (+{len(ignored) - 3} more)" if len(ignored) > 3 else "")
            warnings.warn(f"{source}: ignored {len(ignored)} entries that are not .json, .jsonl or .parquet files: "
                          f"{shown}", stacklevel=2)  # fmt: skip
    else:
        yield from ((source, i, row) for i, row in enumerate(_load_hub(source, subset, split)))
        return
    for file in files:  # one file at a time, so a bad row is named by its own file and index
        if file.stat().st_size == 0 or not file.read_bytes().removeprefix(codecs.BOM_UTF8).strip():
            raise DataError(f"{file}: the file is empty (no rows)")
        if file.suffix.lower() == ".parquet":
            rows = enumerate(load_dataset("parquet", data_files={split: str(file)}, split=split))
        else:
            rows = _read_json(file)
        yield from ((str(file), i, row) for i, row in rows)


def _load_hub(source: str, subset: str | None, split: str) -> Iterable[Row]:
    try:
        return load_dataset(source, name=subset, split=split)
    except (ConnectionError, FileNotFoundError, DatasetNotFoundError) as error:  # offline, or no such dataset
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise DataError(
            f"{source}: no such local file or folder, and not loadable from the Hub ({reason}); a local file "
            "needs a .json, .jsonl or .parquet suffix"
        ) from None
    except ValueError as error:  # `datasets`' words for a config or split the dataset lacks
        if not str(error).startswith(("Config name is missing", "BuilderConfig", "Unknown split")):
            raise
        what = " ".join(str(error).split("\n")[:2])
        raise ConfigError(
            f"{source} (subset={subset}, split={split}): {what}; data.subset picks the config "
            "(load_dataset's name), data.split and data.eval_split the splits"
        ) from None


def _read_json(path: Path) -> Iterator[tuple[int, Row | BadRow]]:
    """The rows of a JSON Lines file, each with its line index, or of a file holding one JSON
    array, each with its index in the array.

    Read here, not with ``datasets.load_dataset("json")``: that fails on the whole file at one
    bad line, with an Arrow error naming neither the line nor the problem, and unifies the
    rows' types file-wide, so a number among strings is cast or refused before any row check
    sees it. Line by line, a bad line is one `BadRow` and the others are read as written.
    """
    data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    if data.lstrip()[:1] == b"[":
        yield from enumerate(_json_array(path, data))
        return
    # Numbered as `row_name` names them: from 1 (the line) in a .jsonl file, else from 0.
    start = 1 if path.suffix.lower() == ".jsonl" else 0
    for index, line in enumerate(data.splitlines(), start=start):
        if line.strip():  # a blank line (a trailing one, say) is no row, but keeps the numbering
            yield index, _json_row(str(path), index, line)


def _json_row(source: str, index: int, line: bytes) -> Row | BadRow:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as error:
        return bad_row(
            source, index, "not_utf8", f"not UTF-8 (byte {line[error.start]:#04x} at column {error.start + 1})"
        )
    try:
        row = json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as error:
        return bad_row(source, index, "malformed_json", f"not valid JSON ({error.msg} at column {error.colno})")
    except DuplicateKey as error:
        return bad_row(source, index, "malformed_json", f"not valid JSON ({error})")
    return row if isinstance(row, dict) else wrong_type(source, index, "a row must be a JSON object", row)


class DuplicateKey(ValueError):
    """A JSON object with a key twice (``json`` keeps the last silently)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    row = dict(pairs)
    if len(row) < len(pairs):
        seen: set[str] = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise DuplicateKey(f"duplicate key {key!r}")
    return row


def _json_array(path: Path, data: bytes) -> list[Row | BadRow]:
    # An array is parsed whole: once its syntax or encoding is broken no row boundary can be
    # trusted, so that fails however on_bad_row is set (JSON Lines can skip a bad line).
    fix = "a JSON array is read whole, so this cannot be skipped; fix it or write JSON Lines"
    try:
        rows = json.loads(data.decode("utf-8"), object_pairs_hook=_unique_keys)
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line}: not UTF-8 (byte {data[error.start]:#04x}); {fix}") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: line {error.lineno}: not valid JSON ({error.msg}); {fix}") from None
    except DuplicateKey as error:
        raise DataError(f"{path}: not valid JSON ({error}); {fix}") from None
    return [
        r if isinstance(r, dict) else wrong_type(str(path), i, "a row must be a JSON object", r)
        for i, r in enumerate(rows)
    ]


def require(row: Row, fields: tuple[str, ...], source: str, index: int) -> None:
    """Fails naming the source and row when one of ``fields`` is absent or null."""
    for field in fields:
        if row.get(field) is None:
            raise bad_row(source, index, "missing_field", f"missing field {field!r} (needs {', '.join(fields)})")


def text_field(row: Row, field: str, source: str, index: int) -> str:
    """``row[field]``, which must be present and text."""
    require(row, (field,), source, index)
    if not isinstance(row[field], str):
        raise wrong_type(source, index, f"{field!r} must be text", row[field])
    return row[field]


def messages_field(row: Row, field: str, source: str, index: int) -> Messages:
    """``row[field]`` as a conversation: a non-empty list of ``{"role", "content"}`` with text
    values (other keys dropped)."""
    require(row, (field,), source, index)
    value = row[field]
    if not isinstance(value, list):
        raise wrong_type(source, index, f"{field!r} must be a list of {{role, content}}", value)
    if not value:
        raise bad_row(source, index, "empty", f"{field!r} has no messages")
    for j, m in enumerate(value):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise wrong_type(source, index, f"{field!r} message {j} must be {{role: text, content: text}}", m)
    return [{"role": m["role"], "content": m["content"]} for m in value]

"""Unpaired feedback from local files or the Hub: single responses with a thumbs-up or down."""

from __future__ import annotations

from lit_align.data.files import _FileDataModule
from lit_align.data.rows import Row, bad_row, require, text_field, wrong_type


class UnpairedDataModule(_FileDataModule):
    """Rows ``prompt``, ``completion`` (text) and ``label`` (a JSON boolean: true for a desirable
    completion), TRL's unpaired preference schema, for ``objective=kto``; other columns are
    ignored. A missing or null label is ``missing_field``, a label that is not a boolean
    (``1``, ``"true"``) ``wrong_type``, an empty prompt or completion ``empty``; each fails in
    one line naming the file and the row (its line in JSON Lines) or is skipped and counted, as
    `_FileDataModule`'s options say. Preference pairs become unpaired rows with ``data=preference
    objective=kto``.
    """

    def normalize(self, row: Row, index: int, source: str) -> Row:
        if self.batch_format != "unpaired":
            raise ValueError("data=unpaired provides rows with a label for objective=kto, not pairs or SFT rows")
        texts = {f: text_field(row, f, source, index) for f in ("prompt", "completion")}
        for field, text in texts.items():
            if not text.strip():
                raise bad_row(source, index, "empty", f"{field!r} is empty")
        require(row, ("label",), source, index)
        if not isinstance(row["label"], bool):
            raise wrong_type(source, index, "'label' must be a boolean (true: desirable)", row["label"])
        return {**texts, "label": row["label"]}

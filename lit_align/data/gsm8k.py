"""GSM8K-format math word problems from local files or the Hub (``openai/gsm8k`` with
``subset="main"``): rows ``question`` and ``answer``, the answer a worked solution ending
``#### <number>``.

SFT trains on the worked solution; held-out questions are scored by generation against the
final number (`exact_match`, as the built-in task); online sampling (RLOO, PPO, online DPO, AFT)
draws from the training questions with their final answers for `MathReward`.
"""

from __future__ import annotations

import re
from typing import Any

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from lit_align.data.collate import encode_prompt_response
from lit_align.data.datamodule import map_rows
from lit_align.data.files import _FileDataModule
from lit_align.data.rows import Row, bad_row, text_field

# GSM8K's calculator annotations: "48/2 = <<48/2=24>>24".
_CALCULATOR = re.compile(r"<<[^>]*>>")


def final_answer(solution: str) -> str:
    """The text after the last ``####``."""
    return solution.rsplit("####", 1)[1].strip()


class Gsm8kDataModule(_FileDataModule):
    """Rows ``question`` and ``answer`` (a solution ending ``#### <number>``).

    Training rows are SFT rows (question → solution); for preference or RL objectives the
    questions are sampled online (``rollout=online``), as the file has no second response.
    A row whose answer has no ``####`` is ``wrong_type``; bad rows follow ``on_bad_row``,
    ``on_empty`` and ``on_long`` (see `_FileDataModule`).

    Args:
        prompt_template: how a question becomes a prompt; ``{question}`` is replaced.
        strip_calculator: drop the ``<<48/2=24>>`` annotations from the solutions trained on.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompt_template: str = "Question: {question}\nAnswer: ",
        strip_calculator: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(tokenizer, **kwargs)
        self.prompt_template = prompt_template
        self.strip_calculator = strip_calculator

    def normalize(self, row: Row, index: int, source: str) -> Row:
        question, answer = text_field(row, "question", source, index), text_field(row, "answer", source, index)
        if not question.strip() or not answer.strip():
            raise bad_row(source, index, "empty", "'question' or 'answer' is empty")
        if "####" not in answer or not final_answer(answer):
            raise bad_row(source, index, "wrong_type", "'answer' must end with '#### <final answer>'")
        solution = _CALCULATOR.sub("", answer) if self.strip_calculator else answer
        return {"prompt": self.prompt_template.format(question=question), "response": solution,
                "answer": final_answer(answer)}  # fmt: skip

    def _encode_train(self, row: Row) -> Row:
        if "response" in row:  # a file row, whatever the objective (the length check reads it)
            return encode_prompt_response(self.tokenizer, row["prompt"], row["response"],
                                          self.max_prompt_length, self.max_length)  # fmt: skip
        return super()._encode_train(row)  # rows online sampling made in the objective's format

    def _set_train(self, raw: Dataset) -> None:
        if "response" in raw.column_names and self.batch_format != "sft":
            raise ValueError(
                f"data=gsm8k has SFT rows only (question -> solution); for {self.batch_format} "
                "sample them from the policy with rollout=online"
            )
        super()._set_train(raw)

    def prompt_set(self) -> Dataset:
        """The training questions as ``prompt`` rows with their final ``answer`` and the
        ``solution`` (for ``rollout.include_reference``)."""
        self.setup()
        return map_rows(
            self._raw_train,
            lambda row: {"solution": row["response"], "answer": final_answer(row["response"])},
            remove_columns=["response"],
        )

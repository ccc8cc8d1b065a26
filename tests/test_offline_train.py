"""SimPO, ORPO and KTO in the module and from data: micro-batching invariance (KTO's step-level
reference point included), KTO's unpaired rows (files, bad rows, pairs unpaired, the built-in
task) and short end-to-end runs."""

from __future__ import annotations

import copy
import json
from functools import partial

import lightning as L
import pytest
import torch
from torch.testing import assert_close
from torch.utils.data import DataLoader

from lit_align.data.arith import ArithDataModule
from lit_align.data.collate import StepCollator, encode_pair
from lit_align.data.files import PreferenceDataModule
from lit_align.data.formats import FORMATS
from lit_align.data.rows import BadRow
from lit_align.data.unpaired import UnpairedDataModule
from lit_align.module import AlignModule
from lit_align.objectives.kto import KTO
from lit_align.objectives.orpo import ORPO
from lit_align.objectives.simpo import SimPO
from lit_align.step import step_inputs
from lit_align.train import train
from tests.conftest import make_cfg


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _rows(tokenizer, fmt, n=8):
    """``n`` rows with prompts and responses of different lengths."""
    if fmt == "pairs":
        return [encode_pair(tokenizer, f"{i}+{i}=?\n", f"{2 * i}" * (1 + i % 3), "#### 1" * (1 + i % 2), 16, 40)
                for i in range(n)]  # fmt: skip
    rows = [{"prompt": f"{i}*{i}=?\n" * (1 + i % 2), "completion": f"{i * i}" * (1 + i % 3), "label": i % 3 != 0}
            for i in range(n)]  # fmt: skip
    return [FORMATS["unpaired"].encode(tokenizer, r, 16, 40) for r in rows]


def _fit_one_step(module, rows, fmt, micro_batch_size):
    fmt = FORMATS[fmt]
    collate = StepCollator(partial(fmt.collate, pad_id=0), micro_batch_size, fmt.prepare_step)
    loader = DataLoader(rows, batch_size=len(rows), collate_fn=collate)
    trainer = L.Trainer(
        max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=loader)


def _moved(model, seed=0):
    """``model`` with every weight nudged, so the policy differs from its starting point."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


CASES = {
    "simpo": (partial(SimPO, beta=2.0, gamma=0.5, label_smoothing=0.1), "pairs"),
    "orpo": (partial(ORPO, lam=0.5), "pairs"),
    "kto": (partial(KTO, beta=0.5, desirable_weight=1.3), "unpaired"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_update_is_invariant_to_micro_batching(tokenizer, tiny_model, case):
    """One SGD step on 8 rows as 1×8 equals it as 8 micro-batches of 1. For KTO the policy is
    moved off its reference first, so the step's reference point z₀ is not 0: one micro-batch
    of one row would make z₀ its own matched pair; the step-level z₀ keeps it the same."""
    objective, fmt = CASES[case]
    rows = _rows(tokenizer, fmt)
    sgd = partial(torch.optim.SGD, lr=1.0)
    modules = []
    for micro in (8, 1):
        module = AlignModule(copy.deepcopy(tiny_model), objective(), tokenizer, optimizer=sgd, grad_clip=None)
        if case == "kto":
            _moved(module.policy)
            batch = FORMATS[fmt].collate(rows, 0)
            z0 = step_inputs(module, [batch])["kl_estimate"]
            assert z0 > 0.01  # the reference point is exercised
            micro_z0 = step_inputs(module, [FORMATS[fmt].collate(rows[:1], 0)])["kl_estimate"]
            assert abs(float(micro_z0) - float(z0)) > 1e-3  # a micro-batch's own z0 would differ
        start = copy.deepcopy(module.policy)
        _fit_one_step(module, rows, fmt, micro)
        modules.append((module, start))
    (whole, start), (split, _) = modules
    moved = 0
    for (name, a), b, s in zip(whole.policy.named_parameters(), split.policy.parameters(), start.parameters(),
                               strict=True):  # fmt: skip
        assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
        moved += not torch.equal(a, s)
    assert moved == len(list(start.parameters()))


def test_kto_pairs_each_prompt_with_the_previous_rows_completion(tokenizer):
    rows = _rows(tokenizer, "unpaired", n=3)
    batch = FORMATS["unpaired"].collate(FORMATS["unpaired"].prepare_step(rows), 0)
    assert batch.desirable.tolist() == [False, True, True]
    for i, j in ((0, 2), (1, 0), (2, 1)):  # TRL: [c[-1]] + c[:-1]
        n = int(batch.response_mask[j].sum())
        assert torch.equal(batch.kl_response_ids[i, :n], batch.response_ids[j, :n])
        assert int(batch.kl_response_mask[i].sum()) == n
    # Cut into micro-batches after the step's rows are paired: row 1 still gets row 0's completion.
    micro = FORMATS["unpaired"].collate(FORMATS["unpaired"].prepare_step(rows)[1:2], 0)
    assert torch.equal(micro.kl_response_ids[0], batch.kl_response_ids[1, : micro.kl_response_ids.shape[1]])


UNPAIRED = [{"prompt": f"{i}+1=?\n", "completion": f"#### {i + 1 + (i % 2)}", "label": i % 2 == 0} for i in range(8)]


def test_unpaired_rows_and_bad_labels_name_the_file_and_row(tokenizer, tmp_path):
    dm = UnpairedDataModule(tokenizer, source=_jsonl(tmp_path / "u.jsonl", UNPAIRED), batch_format="unpaired",
                            num_val=2, num_test=2)  # fmt: skip
    dm.setup()
    assert len(dm.train_split()) == 4 and dm.train_split()[0]["label"] is True
    not_bool = r"u2.jsonl: line 3: 'label' must be a boolean"  # JSON Lines: the 1-based line
    cases = [({"prompt": "x", "completion": "y"}, r"u2.jsonl: line 3: missing field 'label'"),
             ({"prompt": "x", "completion": "y", "label": "true"}, not_bool),
             ({"prompt": "x", "completion": "y", "label": 1}, not_bool)]  # fmt: skip
    for bad, match in cases:
        source = _jsonl(tmp_path / "u2.jsonl", [*UNPAIRED[:2], bad, *UNPAIRED[2:]])
        with pytest.raises(BadRow, match=match) as error:
            UnpairedDataModule(tokenizer, source=source, batch_format="unpaired").setup()
        assert "\n" not in str(error.value)
    skipped = UnpairedDataModule(tokenizer, source=source, batch_format="unpaired", on_bad_row="skip", num_val=1,
                                 num_test=1)  # fmt: skip
    skipped.setup()
    assert skipped.stats["data/dropped_rows/wrong_type"] == 1


def test_pairs_and_the_built_in_task_become_unpaired_rows(tokenizer, tmp_path):
    pairs = [{"prompt": f"{i}+1=?\n", "chosen": f"#### {i + 1}", "rejected": f"#### {i + 2}"} for i in range(6)]
    dm = PreferenceDataModule(tokenizer, source=_jsonl(tmp_path / "p.jsonl", pairs), batch_format="unpaired",
                              num_val=1, num_test=1)  # fmt: skip
    dm.setup()
    train = dm.train_split()
    # 12 unpaired rows; num_val + num_test count rows, so the first pair is held out.
    assert len(train) == 10 and train["label"] == [True, False] * 5
    arith = ArithDataModule(tokenizer, num_train=5, num_val=2, num_test=2, batch_format="unpaired")
    arith.setup()
    assert arith.train_split()["label"] == [True, False] * 5


def test_ultrafeedback_pairs_become_unpaired_rows(tokenizer):
    """The UltraFeedback fixture's 11 good pairs and its tie (rows 5 and 12 skipped) as 24 rows,
    the chosen conversation's answer desirable; 4 held out."""
    from tests.test_hub_data import ULTRAFEEDBACK

    dm = PreferenceDataModule(tokenizer, source=str(ULTRAFEEDBACK), batch_format="unpaired", on_bad_row="skip",
                              num_val=2, num_test=2)  # fmt: skip
    dm.setup()
    assert len(dm.train_split()) == 24 - 4 and dm.train_split()["label"] == [True, False] * 10


def test_kto_trains_from_an_unpaired_file(tmp_path):
    source = _jsonl(tmp_path / "u.jsonl", UNPAIRED * 2)
    overrides = ["objective=kto", "init=none", "data=unpaired", f"data.source={source}", "data.num_val=4",
                 "data.num_test=4"]  # fmt: skip
    summary = train(make_cfg(tmp_path / "run", *overrides, "data.batch_size=4", "trainer.max_steps=3"))
    assert summary["steps"] == 3
    assert {"val/loss", "val/kto/kl", "val/rewards/chosen"} <= set(summary["start"])
    assert "test/loss" in summary["final"]


@pytest.mark.parametrize("objective", ["simpo", "orpo", "kto"])
def test_each_trains_on_the_built_in_task(tmp_path, objective):
    summary = train(make_cfg(tmp_path / "run", f"objective={objective}", "init=none", "data.batch_size=4",
                             "trainer.max_steps=2", "eval.before_train=false"))  # fmt: skip
    assert summary["steps"] == 2 and "test/accuracy" in summary["final"]

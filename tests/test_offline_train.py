"""SimPO, ORPO and KTO in the module and from data: micro-batching invariance (KTO's step-level
reference point included), KTO's unpaired rows (files, bad rows, pairs unpaired, the built-in
task) and short end-to-end runs."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from functools import partial
from pathlib import Path

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
from lit_align.data.unpaired_format import mismatched_responses
from lit_align.module import AlignModule
from lit_align.objectives.kto import KTO
from lit_align.objectives.orpo import ORPO
from lit_align.objectives.simpo import SimPO
from lit_align.step import step_inputs
from lit_align.train import train
from tests.conftest import FAST, SMALL_MODEL, make_cfg
from tests.test_hub_data import ULTRAFEEDBACK

ROOT = Path(__file__).resolve().parents[1]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _rows(tokenizer, fmt, n=8):
    """``n`` rows with prompts and responses of different lengths (unpaired: as a datamodule's
    split serves them, each with its mismatched response)."""
    if fmt == "pairs":
        return [encode_pair(tokenizer, f"{i}+{i}=?\n", f"{2 * i}" * (1 + i % 3), "#### 1" * (1 + i % 2), 16, 40)
                for i in range(n)]  # fmt: skip
    rows = [{"prompt": f"{i}*{i}=?\n" * (1 + i % 2), "completion": f"{i * i}" * (1 + i % 3), "label": i % 3 != 0}
            for i in range(n)]  # fmt: skip
    encoded = [FORMATS["unpaired"].encode(tokenizer, r, 16, 40) for r in rows]
    kl = mismatched_responses([r["input_ids"] for r in encoded], [r["prompt_len"] for r in encoded])
    return [{**row, "kl_response": response} for row, response in zip(encoded, kl, strict=True)]


def _fit_one_step(module, rows, fmt, micro_batch_size):
    fmt = FORMATS[fmt]
    collate = StepCollator(partial(fmt.collate, pad_id=0), micro_batch_size)
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
    "kto_nll": (partial(KTO, beta=0.5, desirable_weight=1.3, sft_weight=1.0), "unpaired"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_update_is_invariant_to_micro_batching(tokenizer, tiny_model, case):
    """One SGD step on 8 rows as 1×8 equals it as 8 micro-batches of 1. For KTO the policy is
    moved off its reference first, so the step's reference point z₀ is not 0: one micro-batch
    of one row would make z₀ its own pair's log-ratio; the step-level z₀ keeps it the same."""
    objective, fmt = CASES[case]
    rows = _rows(tokenizer, fmt)
    sgd = partial(torch.optim.SGD, lr=1.0)
    modules = []
    for micro in (8, 1):
        module = AlignModule(copy.deepcopy(tiny_model), objective(), tokenizer, optimizer=sgd, grad_clip=None)
        if case.startswith("kto"):
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


def test_kto_pairs_each_prompt_with_a_completion_half_the_split_away(tokenizer, tmp_path):
    """Row i of n gets row (i + n // 2) mod n's completion, fixed when the split is built: a
    micro-batch (or a rank) holding only row 1 still gets it. A pair's two rows are adjacent and
    share a prompt, so a shift by one would pair them with each other."""
    pairs = [{"prompt": f"{i}+1=?\n", "chosen": f"#### {i + 1}", "rejected": f"#### {i + 2}" * 2} for i in range(3)]
    dm = PreferenceDataModule(tokenizer, source=_jsonl(tmp_path / "p.jsonl", pairs), batch_format="unpaired",
                              num_val=0, num_test=0)  # fmt: skip
    dm.setup()
    split = dm.train_split()
    batch = FORMATS["unpaired"].collate(list(split), 0)
    assert batch.desirable.tolist() == [True, False] * 3
    for i, j in ((0, 3), (1, 4), (2, 5), (3, 0), (4, 1), (5, 2)):
        n = int(batch.response_mask[j].sum())
        assert torch.equal(batch.kl_response_ids[i, :n], batch.response_ids[j, :n])
        assert int(batch.kl_response_mask[i].sum()) == n
    micro = FORMATS["unpaired"].collate([split[1]], 0)
    assert torch.equal(micro.kl_response_ids[0], batch.kl_response_ids[1, : micro.kl_response_ids.shape[1]])
    # Rows collated without a split's column are their own split: one row gets its own response.
    alone = FORMATS["unpaired"].collate([{k: v for k, v in split[0].items() if k != "kl_response"}], 0)
    assert torch.equal(alone.kl_response_ids, alone.response_ids)


UNPAIRED = [{"prompt": f"{i}+1=?\n", "completion": f"#### {i + 1 + (i % 2)}", "label": i % 2 == 0} for i in range(8)]


def test_unpaired_rows_and_bad_labels_name_the_file_and_row(tokenizer, tmp_path):
    dm = UnpairedDataModule(tokenizer, source=_jsonl(tmp_path / "u.jsonl", UNPAIRED), batch_format="unpaired",
                            num_val=2, num_test=2)  # fmt: skip
    dm.setup()
    assert len(dm.train_split()) == 4 and dm.train_split()[0]["label"] is True
    not_bool = r"u2.jsonl: line 3: 'label' must be a boolean"  # JSON Lines: the 1-based line
    missing = r"u2.jsonl: line 3: missing field 'label'"
    cases = [({"prompt": "x", "completion": "y"}, missing),
             ({"prompt": "x", "completion": "y", "label": None}, missing),
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


@pytest.mark.slow  # a CLI subprocess run of 15-30 s: the default suite keeps under 10 minutes
def test_the_cli_reports_a_bad_label_in_one_line(tmp_path):
    source = _jsonl(tmp_path / "u.jsonl", [*UNPAIRED[:2], {"prompt": "x", "completion": "y", "label": "yes"}])
    out = subprocess.run([sys.executable, "-m", "lit_align", "objective=kto", "init=none", "data=unpaired",
                          f"data.source={source}", f"hydra.run.dir={tmp_path / 'run'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        f"lit_align: {source}: line 3: 'label' must be a boolean (true: desirable), got str 'yes'; "
        "data.on_bad_row=skip skips such rows"
    )


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
    dm = PreferenceDataModule(tokenizer, source=str(ULTRAFEEDBACK), batch_format="unpaired", on_bad_row="skip",
                              num_val=2, num_test=2)  # fmt: skip
    dm.setup()
    assert len(dm.train_split()) == 24 - 4 and dm.train_split()["label"] == [True, False] * 10


def _cli(run_dir, *overrides) -> dict:
    """A short KTO run through the CLI (a subprocess), its summary.json."""
    args = [*FAST, *SMALL_MODEL, "objective=kto", "init=none", "data.batch_size=4", "data.eval_batch_size=4",
            f"hydra.run.dir={run_dir}", *overrides]  # fmt: skip
    out = subprocess.run([sys.executable, "-m", "lit_align", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads((run_dir / "summary.json").read_text())


def test_kto_trains_from_an_unpaired_file_through_the_cli(tmp_path):
    source = _jsonl(tmp_path / "u.jsonl", UNPAIRED * 2)
    summary = _cli(tmp_path / "run", "data=unpaired", f"data.source={source}", "data.num_val=4", "data.num_test=4",
                   "trainer.max_steps=3")  # fmt: skip
    assert summary["steps"] == 3
    assert summary["data"]["data/train_rows"] == 8
    assert {"val/loss", "val/kto/kl", "val/rewards/chosen"} <= set(summary["start"])
    assert "test/loss" in summary["final"]


@pytest.mark.slow  # a CLI subprocess run of 20-40 s: the default suite keeps under 10 minutes
def test_kto_trains_from_ultrafeedback_pairs_unpaired_through_the_cli(tmp_path):
    """data=ultrafeedback with objective=kto: each of the fixture's 11 good pairs (the tie
    dropped, the 2 bad rows skipped) gives a desirable and an undesirable row; 4 rows held out."""
    summary = _cli(tmp_path / "run", "data=ultrafeedback", f"data.source={ULTRAFEEDBACK}", "data.eval_source=null",
                   "data.on_bad_row=skip", "data.num_val=2", "data.num_test=2", "trainer.max_steps=2")  # fmt: skip
    assert summary["steps"] == 2
    assert summary["data"]["data/train_rows"] == 22 - 4
    assert summary["data"]["data/dropped_rows/tie"] == 1
    assert {"val/loss", "val/kto/kl", "val/rewards/rejected"} <= set(summary["start"])
    assert "test/loss" in summary["final"]


@pytest.mark.parametrize("objective", ["simpo", "orpo", "kto"])
def test_each_trains_on_the_built_in_task(tmp_path, objective):
    summary = train(make_cfg(tmp_path / "run", f"objective={objective}", "init=none", "data.batch_size=4",
                             "trainer.max_steps=2", "eval.before_train=false"))  # fmt: skip
    assert summary["steps"] == 2 and "test/accuracy" in summary["final"]

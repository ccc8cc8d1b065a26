"""AlignModule: micro-batching invariance and the frozen reference."""

from __future__ import annotations

import copy
from functools import partial

import lightning as L
import pytest
import torch
from torch.testing import assert_close
from torch.utils.data import DataLoader

from lit_align.data.collate import StepCollator, encode_prompt_response
from lit_align.data.formats import FORMATS
from lit_align.models.forward import forward_logps
from lit_align.module import AlignModule
from lit_align.objectives.base import ObjectiveOutput
from lit_align.objectives.reduce import masked_sum, normalize
from lit_align.objectives.sft import SFT


def _rows(tokenizer, n=8):
    # Responses of different lengths, so micro-batches hold different token counts.
    return [encode_prompt_response(tokenizer, f"{i}+{i}=?\n", f"{2 * i}" * (1 + i % 4), 16, 32) for i in range(n)]


def _fit_one_step(module, rows, micro_batch_size, steps=1):
    collate = StepCollator(partial(FORMATS["sft"].collate, pad_id=0), micro_batch_size)
    loader = DataLoader(rows, batch_size=len(rows), collate_fn=collate)
    trainer = L.Trainer(
        max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=loader)
    return trainer


@pytest.mark.parametrize("micro_batch_size", [1, 2, 3, 4])
def test_update_is_invariant_to_micro_batching(tokenizer, tiny_model, micro_batch_size):
    """One SGD step on 8 rows as 1×8 equals the same step as 8/k micro-batches of k.

    SGD, not Adam: Adam's update hides a rescaled gradient, SGD's does not.
    """
    rows = _rows(tokenizer)
    sgd = partial(torch.optim.SGD, lr=1.0)
    whole = AlignModule(copy.deepcopy(tiny_model), SFT(), tokenizer, optimizer=sgd, grad_clip=None)
    split = AlignModule(copy.deepcopy(tiny_model), SFT(), tokenizer, optimizer=sgd, grad_clip=None)
    _fit_one_step(whole, rows, micro_batch_size=8)
    _fit_one_step(split, rows, micro_batch_size=micro_batch_size)
    moved = 0
    for (name, a), b, start in zip(
        whole.policy.named_parameters(), split.policy.parameters(), tiny_model.parameters(), strict=True
    ):
        assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
        moved += not torch.equal(a, start)
    assert moved == len(list(tiny_model.parameters()))


def test_reported_loss_is_the_token_mean_of_the_step(tokenizer, tiny_model):
    rows = _rows(tokenizer)
    module = AlignModule(copy.deepcopy(tiny_model), SFT(), tokenizer, optimizer=partial(torch.optim.SGD, lr=0.0))
    trainer = _fit_one_step(module, rows, micro_batch_size=3)
    # The flat forward over whole right-padded sequences, independent of the module's own.
    ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(r["input_ids"]) for r in rows], batch_first=True)
    attention = (torch.arange(ids.shape[1])[None] < torch.tensor([len(r["input_ids"]) for r in rows])[:, None]).long()
    mask = attention * (torch.arange(ids.shape[1])[None] >= torch.tensor([r["prompt_len"] for r in rows])[:, None])
    with torch.no_grad():
        logps = forward_logps(tiny_model, ids, attention)
    assert_close(trainer.callback_metrics["train/loss"], -masked_sum(logps, mask[:, 1:]) / mask[:, 1:].sum())


class NeedsReference(SFT):
    """SFT plus a term that reads the reference log-probs, to exercise the reference path."""

    needs_reference = True

    def forward(self, batch, logps, ref_logps, normalizer):
        assert ref_logps is not None and not ref_logps.requires_grad
        return ObjectiveOutput(normalize(masked_sum((logps - ref_logps) ** 2 - logps, batch.loss_mask), normalizer), {})


def test_policy_trains_in_train_mode_even_if_loaded_in_eval_mode(tokenizer, tiny_model):
    module = AlignModule(tiny_model.eval(), SFT(), tokenizer, optimizer=torch.optim.AdamW)
    assert module.policy.training and all(m.training for m in module.policy.modules())


def test_reference_is_frozen_and_not_stored_twice(tokenizer, tiny_model, tmp_path):
    module = AlignModule(
        copy.deepcopy(tiny_model), NeedsReference(), tokenizer, optimizer=partial(torch.optim.AdamW, lr=1e-2)
    )
    assert AlignModule(tiny_model, SFT(), tokenizer, optimizer=torch.optim.AdamW).reference is None
    trainer = _fit_one_step(module, _rows(tokenizer), micro_batch_size=4, steps=2)
    ref = module.reference
    assert not ref.training and all(not p.requires_grad for p in ref.parameters())
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in ref.parameters()}
    for a, b in zip(ref.parameters(), tiny_model.parameters(), strict=True):
        assert torch.equal(a, b)  # the reference is still the starting policy
    assert any(not torch.equal(a, b) for a, b in zip(module.policy.parameters(), tiny_model.parameters(), strict=True))

    path = tmp_path / "step.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=True)["state_dict"]
    assert state and not any(k.startswith("reference.") for k in state)
    restored = AlignModule.load_from_checkpoint(
        path, policy=copy.deepcopy(tiny_model), objective=NeedsReference(), tokenizer=tokenizer,
        optimizer=torch.optim.AdamW, weights_only=True,
    )  # fmt: skip
    for a, b in zip(restored.policy.parameters(), module.policy.parameters(), strict=True):
        assert torch.equal(a, b)

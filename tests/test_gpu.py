"""On a GPU machine (`pytest -m gpu`; skipped without CUDA): SFT, DPO and RLOO on a model of
Qwen2.5-0.5B's size (random weights from its configuration, built locally: nothing is
downloaded) in bf16 under FSDP2, printing tokens/s and model FLOPs utilisation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from tests.fixtures_models import ENDOFTEXT, IM_END, qwen_tokenizer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
ROOT = Path(__file__).resolve().parents[1]
# Dense bf16 peak of one H100/H200 SXM; set LIT_ALIGN_PEAK_FLOPS for another GPU.
PEAK_FLOPS = float(os.environ.get("LIT_ALIGN_PEAK_FLOPS", 989e12))


def qwen_05b_sized(path: Path) -> tuple[Path, int]:
    """Qwen2.5-0.5B's architecture (24 layers, width 896, 14 heads / 2 KV heads, MLP 4864, a
    151,936-row tied embedding) with random weights and the fixture's Qwen-format tokenizer;
    returns the directory and the parameter count without the embedding."""
    config = Qwen2Config(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, max_position_embeddings=32768, tie_word_embeddings=True, rope_theta=1e6,
        bos_token_id=ENDOFTEXT, eos_token_id=IM_END,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(path)
    qwen_tokenizer().save_pretrained(path)
    embedding = model.get_input_embeddings().weight.numel()
    return path, sum(p.numel() for p in model.parameters()) - embedding


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return qwen_05b_sized(tmp_path_factory.mktemp("qwen05b"))


RUNS = {
    "sft": ["objective=sft"],
    "dpo": ["objective=dpo", "init=none"],
    "rloo": ["objective=rloo", "init=none", "rollout.num_prompts=32", "rollout.num_samples=4"],
}


@pytest.mark.parametrize("objective", RUNS)
def test_qwen_sized_run_in_bf16_with_fsdp2(tmp_path, model_dir, objective):
    path, params = model_dir
    devices = torch.cuda.device_count()
    strategy = ["strategy=fsdp2", f"trainer.devices={devices}"] if devices > 1 else []
    args = [*RUNS[objective], "model=qwen2.5-0.5b", f"model.name_or_path={path}", *strategy,
            "trainer.precision=bf16-mixed", "optimizer.lr=1e-5", "data.batch_size=32", "data.micro_batch_size=8",
            "trainer.max_steps=30", "trainer.val_check_interval=30", "eval.before_train=false",
            "eval.max_new_tokens=32", f"hydra.run.dir={tmp_path}"]  # fmt: skip
    out = subprocess.run([sys.executable, "-m", "lit_align", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=1200)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    tokens_per_s = summary["train_tokens_per_s"]  # per process: each rank logs its own tokens
    # 6 N FLOPs per trained token (forward + backward over the non-embedding weights), plus the
    # tied output head's 6 × width × vocab; the reference's forward (DPO) is not counted.
    flops_per_token = 6 * (params + 896 * 151936)
    mfu = flops_per_token * tokens_per_s / PEAK_FLOPS
    print(f"{objective}: {tokens_per_s:.0f} tokens/s per GPU, MFU {mfu:.1%} ({devices} GPU)")
    assert summary["steps"] == 30 and summary["skipped_steps"] == 0 and mfu > 0

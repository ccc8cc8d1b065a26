"""What every contender of `tools/bench.py` shares: the settings, the model, the data and the
step gate through which the controller times and paces each contender's own training loop.

A contender is a worker process that builds its model, data and loop from a `Spec`, then calls
`Gate.step_begin()` at the start of every optimizer step (a Lightning callback for lit_align, a
`TrainerCallback` for TRL, a plain call in the bare loop). The gate times each step from one
begin to the next, so data loading, logging and callbacks are inside the step, and blocks
between blocks of timed steps until the controller says go: contenders take turns on the CPU
(A B C A B C ...) and machine drift hits them alike.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import bench_qwen
import torch

from lit_align.data.arith import ArithDataModule
from lit_align.models.tiny import char_tokenizer, tiny_llama

# Llama sizes (the tiny default and a ~10M-parameter one): hidden, layers, heads, MLP width. The
# third model, "qwen", is Qwen2.5-0.5B-shaped with 2 layers, loaded from `bench_qwen.prepare`'s folder.
MODELS = {
    "tiny": dict(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=384),
    "small": dict(hidden_size=384, num_layers=6, num_heads=6, intermediate_size=1024),
}


@dataclass
class Spec:
    """One workload's settings; identical for every contender."""

    workload: str  # sft | dpo | rloo | grpo | generate | aft | rm
    model: str = "tiny"  # tiny | small (Llamas, the arithmetic task) | qwen (random rows, `bench_qwen`)
    batch_size: int = 16  # rows per step: SFT rows, DPO/RM pairs, AFT questions, RLOO/GRPO/generate prompts
    num_samples: int = 4  # RLOO/GRPO/generate: samples per prompt (GRPO's group)
    group_size: int = 5  # AFT: chains per question (4 sampled or corrupted ones and the gold one)
    max_new_tokens: int = 48
    temperature: float = 1.0
    steps: int = 3  # arithmetic steps per problem: sets the sequence length
    max_length: int = 512  # tokens per sequence; above every row's length, so nothing is cut
    num_train: int = 1024
    lr: float = 1.0e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    beta: float = 0.1  # DPO's β; AFT's boundary margin β
    vft_weight: float = 1.0  # AFT's weight of L_VFT
    kl_coef: float = 0.05  # RLOO's β, k1 KL in the reward
    grpo_kl_coef: float = 0.04  # GRPO's β, k3 KL in the loss
    clip_epsilon: float = 0.2  # GRPO's clip range [1 − ε, 1 + ε]
    seed: int = 0
    # "warmup": untimed steps; "lit_overrides": more command-line overrides for lit_align (the
    # `VARIANTS` add theirs here); "trl_gradient_checkpointing" (see `bench_trl`).
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_per_step(self) -> int:
        """Sequences a step trains on (a DPO or RM pair is two; an AFT question its whole group;
        an RLOO or GRPO step all its samples)."""
        per_row = {"sft": 1, "dpo": 2, "rm": 2, "aft": self.group_size}
        return self.batch_size * per_row.get(self.workload, self.num_samples)

    @property
    def name(self) -> str:
        return f"{self.workload}-{self.model}-b{self.batch_size}-s{self.steps}"


# Contenders that are another contender's worker with more lit_align overrides: lit_align with the
# flat forward (every response with its own copy of the prompt) once the shared-prefix switch exists.
VARIANTS = {"lit_flat": ("lit", ["model.shared_prefix=false"])}


def prepare(spec: Spec) -> None:
    """Writes what the spec's contenders read from disk (the Qwen-shaped model, its tokenizer and
    the workload's rows); nothing for the built-in models. Run by the controller before workers start."""
    if spec.model == "qwen":
        bench_qwen.prepare(spec.seed, [(spec.workload, spec.num_train)])


def tokenizer(spec: Spec | None = None):
    """The character tokenizer, or the Qwen-shaped model's word-level one, as lit_align loads it."""
    if spec is not None and spec.model == "qwen":
        from lit_align.models.hf import load_tokenizer

        return load_tokenizer(str(bench_qwen.tokenizer_dir(spec.seed)))
    return char_tokenizer()


def build_model(spec: Spec, tok, head: str = "lm") -> torch.nn.Module:
    """The same randomly initialised model for every contender (seeded): a causal LM, or with
    ``head="score"`` the same trunk with a one-label score head (a reward model; its head is new,
    drawn after the trunk from the same seed)."""
    torch.manual_seed(spec.seed)
    if spec.model == "qwen":
        from lit_align.models.hf import load_model

        return load_model(str(bench_qwen.model_dir(spec.seed)), tok, head=head)
    return tiny_llama(tok, **MODELS[spec.model], head=head)


def model_path(spec: Spec) -> str | None:
    """The folder the model is loaded from, when it is one (the Qwen-shaped model)."""
    return str(bench_qwen.model_dir(spec.seed)) if spec.model == "qwen" else None


def datamodule(spec: Spec, tok, batch_format: str):
    """The built-in task at the spec's size, or the Qwen-shaped rows' file; rows in ``batch_format``."""
    if spec.model == "qwen":
        source = bench_qwen.data_file(spec.workload, spec.seed, spec.num_train)
        return bench_qwen.datamodule(spec.workload, source, tok, batch_format, spec.batch_size, spec.max_length)
    dm = ArithDataModule(
        tok, num_train=spec.num_train, num_val=8, num_test=8, steps=spec.steps, batch_size=spec.batch_size,
        group_size=spec.group_size,
    )  # fmt: skip
    dm.batch_format = batch_format
    return dm


def rows(spec: Spec, tok, batch_format: str) -> list[dict[str, Any]]:
    """The training rows as text, exactly as lit_align's datamodule makes them, in lit_align's
    first-epoch order (`first_epoch_order`): every contender then trains on the same batches, so
    their step times are not apart by how long each one's batches happened to be padded."""
    data = datamodule(spec, tok, batch_format).build_splits()["train"].to_list()
    return [data[i] for i in first_epoch_order(len(data), spec.seed)]


def first_epoch_order(n: int, seed: int) -> list[int]:
    """lit_align's training order for epoch 0 on one process (`DistributedSampler`'s: a
    permutation from a generator seeded with ``seed + epoch``)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


class Gate:
    """Times each step from its begin to the next step's begin; paces blocks of steps."""

    def __init__(self, warmup: int, commands=sys.stdin, replies=sys.stdout) -> None:
        self.warmup, self.commands, self.replies = warmup, commands, replies
        self.block = 0  # timed steps left in the current block
        self.times: list[float] = []
        self.started: float | None = None  # the begin of the step being timed

    def step_begin(self) -> None:
        now = time.perf_counter()
        if self.started is not None:
            self.times.append(now - self.started)
            self.block -= 1
        if self.warmup > 0:  # this step is a warm-up step: untimed
            self.warmup -= 1
            return
        if self.block <= 0:  # the first reply (no times) says the worker is ready
            self._reply()
            self._wait()
        self.started = time.perf_counter()

    def _reply(self) -> None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"times": self.times, "peak_rss_mb": peak}), file=self.replies, flush=True)
        self.times = []

    def _wait(self) -> None:
        line = self.commands.readline()
        if not line or line.strip() == "stop":
            os._exit(0)  # no teardown: the controller has what it needs
        self.block = int(line)


def worker_main() -> None:
    """``python tools/bench_setup.py <contender> '<spec json>'``: run a contender under a gate.

    The worker's stdout is the reply channel, so everything the contender prints goes to stderr.
    """
    contender, spec = sys.argv[1], Spec(**json.loads(sys.argv[2]))
    if contender in VARIANTS:
        contender, more = VARIANTS[contender]
        spec.extra = {**spec.extra, "lit_overrides": [*spec.extra.get("lit_overrides", []), *more]}
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    gate = Gate(spec.extra.get("warmup", 2), replies=replies)
    module = __import__(f"bench_{contender}")
    module.run(spec, gate)
    raise RuntimeError(f"{contender} stopped before the controller did (its loop ran out of steps)")


if __name__ == "__main__":
    worker_main()

"""Where a contender's step time goes: cProfile over timed steps of one `tools/bench.py` workload.

    python tools/bench_profile.py lit sft [--model tiny|small|qwen] [--steps 30]

Prints the step time split into the model's forward, autograd's backward, the optimizer, gradient
clipping and everything else (the framework: data, logging, hooks), then the top functions by own
time. Profiling slows Python-heavy code more than kernels, so read the split, not the totals.
"""

from __future__ import annotations

import argparse
import cProfile
import inspect
import io
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch
from bench_setup import Gate, Spec, prepare


def buckets() -> dict[str, list]:
    """The code objects whose cumulative time makes each bucket (decorators unwrapped)."""
    from transformers import (
        GenerationMixin,
        LlamaForCausalLM,
        LlamaForSequenceClassification,
        Qwen2ForCausalLM,
        Qwen2ForSequenceClassification,
    )

    models = (LlamaForCausalLM, LlamaForSequenceClassification, Qwen2ForCausalLM, Qwen2ForSequenceClassification)
    return {
        "forward": [inspect.unwrap(m.forward).__code__ for m in models],  # every model call, generation's too
        "backward": [torch.autograd.backward.__code__],
        "optimizer": [inspect.unwrap(torch.optim.AdamW.step).__code__],
        "clip": [inspect.unwrap(torch.nn.utils.clip_grad_norm_).__code__],
        "generate": [inspect.unwrap(GenerationMixin.generate).__code__],
    }


class Stop(Exception):
    pass


class CountingGate(Gate):
    """Lets ``warmup`` steps run untimed, then profiles ``steps`` steps and stops."""

    def __init__(self, warmup: int, steps: int, profiler: cProfile.Profile) -> None:
        super().__init__(warmup)
        self.left, self.profiler, self.begun = steps, profiler, 0.0
        self.elapsed = 0.0

    def step_begin(self) -> None:
        if self.warmup > 0:
            self.warmup -= 1
            if self.warmup == 0:
                self.profiler.enable()
                self.begun = time.perf_counter()
            return
        self.left -= 1
        if self.left < 0:
            self.profiler.disable()
            self.elapsed = time.perf_counter() - self.begun
            raise Stop


def split(stats: pstats.Stats) -> dict[str, float]:
    """Cumulative seconds in each bucket's function (none of them recurses)."""
    index = {(c.co_filename, c.co_firstlineno, c.co_name): name for name, codes in buckets().items() for c in codes}
    totals = dict.fromkeys(buckets(), 0.0)
    for key, (_, _, _, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        if key in index:
            totals[index[key]] += cumulative
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("contender", choices=["lit", "trl", "bare"])
    parser.add_argument("workload", choices=["sft", "dpo", "aft", "rm", "rloo", "grpo", "generate"])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dump", type=Path, help="also write the raw profile here (for snakeviz, pstats)")
    args = parser.parse_args()
    spec = Spec(args.workload, args.model, batch_size=args.batch_size)
    if args.model == "qwen":  # bench.py's rows: math-like up to 512 tokens, preference-like up to 1024
        spec.max_length, spec.num_train = (1024 if args.workload in ("dpo", "rm") else 512), 64
    prepare(spec)
    profiler = cProfile.Profile()
    gate = CountingGate(warmup=3, steps=args.steps, profiler=profiler)
    try:
        __import__(f"bench_{args.contender}").run(spec, gate)
    except Stop:
        pass
    except Exception as error:  # Lightning wraps what a callback raises
        if not isinstance(error.__cause__ or error.__context__, Stop) and "Stop" not in repr(error):
            raise
    stats = pstats.Stats(profiler)
    if args.dump:
        profiler.dump_stats(args.dump)
    per_step = gate.elapsed / args.steps
    seconds_in = split(stats)
    print(f"{args.contender} {args.workload} {args.model}: {1000 * per_step:.1f} ms per step (profiled)")
    for bucket, seconds in seconds_in.items():
        print(f"  {bucket:<10} {1000 * seconds / args.steps:7.1f} ms  {100 * seconds / gate.elapsed:5.1f} %")
    if not seconds_in["generate"]:  # else generation's forwards are in "forward" too
        rest = gate.elapsed - sum(seconds_in.values())
        print(f"  {'other':<10} {1000 * rest / args.steps:7.1f} ms  {100 * rest / gate.elapsed:5.1f} %")
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
    print(out.getvalue())


if __name__ == "__main__":
    main()

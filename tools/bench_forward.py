"""The three training forwards on one `tools/bench.py` workload's first micro-batch: flat (each
response behind its own copy of its prompt), the prefix cache (prompts once, then the responses
reading their keys and values) and packed (one call, a block mask). Same model, same batch.

    python tools/bench_forward.py dpo --model tiny --batch-size 8 [--repeats 12]

Prints the median time of a forward + backward through the policy's response log-probs and of a
no-grad forward (the reference's), the three methods taking turns, and the largest log-prob
difference from flat. `tools/bench.py` times whole steps; this isolates the forward.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch
from bench_setup import Spec, build_model, datamodule, prepare, tokenizer

from lit_align.models import response_forward
from lit_align.models.response_forward import response_logps

FORMAT = {"sft": "sft", "dpo": "pairs", "rm": "pairs", "aft": "groups"}


def first_batch(spec: Spec, tok):
    dm = datamodule(spec, tok, FORMAT[spec.workload])
    dm.setup()
    return next(iter(dm.train_dataloader()))[0]  # the step's only micro-batch


def run(model, inputs: dict, method: str) -> torch.Tensor:
    if method == "flat":
        return response_logps(model, **inputs, shared=False).logps
    original = response_forward.prefix_method
    response_forward.prefix_method = lambda _: method
    try:
        return response_logps(model, **inputs, shared=True).logps
    finally:
        response_forward.prefix_method = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workload", choices=list(FORMAT))
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=12)
    args = parser.parse_args()
    spec = Spec(args.workload, args.model, batch_size=args.batch_size)
    if args.model == "qwen":  # bench.py's rows: math-like up to 512 tokens, preference-like up to 1024
        spec.max_length, spec.num_train = (1024 if args.workload in ("dpo", "rm") else 512), 64
    prepare(spec)
    tok = tokenizer(spec)
    model = build_model(spec, tok)
    inputs = first_batch(spec, tok).forward_inputs()
    methods = ("flat", "cache", "packed")
    with torch.no_grad():
        flat = run(model, inputs, "flat")
        for method in methods[1:]:
            difference = float((run(model, inputs, method) - flat).abs().max())
            print(f"{method}: max |log-prob − flat| {difference:.2e}")
    print(f"prompts {tuple(inputs['prompt_ids'].shape)}, responses {tuple(inputs['response_ids'].shape)}")
    for grad in (True, False):
        times: dict[str, list[float]] = {m: [] for m in methods}
        for _ in range(args.repeats):
            for method in methods:
                began = time.perf_counter()
                with torch.set_grad_enabled(grad):
                    logps = run(model, inputs, method)
                    if grad:
                        logps.sum().backward()
                times[method].append(time.perf_counter() - began)
        medians = {m: 1000 * statistics.median(t[1:]) for m, t in times.items()}  # the first: warm-up
        label = "forward + backward" if grad else "no-grad forward"
        shares = (f"{m} {ms:.1f} ms ({ms / medians['flat']:.2f} of flat)" for m, ms in medians.items())
        print(f"{label}: " + ", ".join(shares))


if __name__ == "__main__":
    main()

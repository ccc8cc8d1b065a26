"""Speed and memory of lit_align against TRL and a bare PyTorch loop, on the same machine.

    python tools/bench.py                     # docs/bench/: results.md, results.json, bench.png, scaling.png
    python tools/bench.py --quick             # a smoke run: tiny model, one round
    python tools/bench.py --only dpo-qwen,aft # some workloads again (merged into results.json)
    python tools/bench.py --lit-flat          # lit_align with the flat forward too (model.shared_prefix=false)
    pip install -e ".[bench]"                 # TRL, the other contender (skipped when missing)

Each workload (SFT, DPO, AFT, reward model, RLOO and GRPO: generation + scoring + update,
generation alone) on each model (tiny, small, and a 2-layer Qwen2.5-0.5B-shaped one with its 151,936-token
vocabulary, `bench_qwen`) runs in one worker process per contender
(`tools/bench_{lit,trl,bare}.py`), all built from the same `Spec`: the same model weights, rows,
batch, lengths and optimizer settings. TRL has no AFT; there the bare loop's flat AFT is the
reference. The workers warm up, then take turns on the CPU (A B C A B C ...) for ``--rounds``
blocks of ``--block`` steps (defaults per model, `TURNS`), so drift hits all. Reported: the
median step time and the spread of the steps, throughput, the worker's peak RSS, and the ratios
to TRL and to the bare loop, all from this one run. Then step time against sequence length and
batch size for SFT and DPO (lit_align and the bare loop, one turn each), for how cost grows.

Each workload's result is written as soon as it is measured: a line appended to results.jsonl
(every run's, each line with its run's start time) and results.json and results.md rewritten,
so an interrupted run keeps what it measured; the plots are drawn at the end.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, replace
from importlib.util import find_spec
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
from bench_setup import Spec, prepare, rows, tokenizer  # noqa: E402

from lit_align.data.collate import encode_prompt_response  # noqa: E402

CONTENDERS = ("lit", "trl", "bare")
NAMES = {"lit": "lit_align", "lit_flat": "lit_align (flat)", "trl": "TRL", "bare": "bare PyTorch"}
NO_TRL = ("aft",)  # TRL has no AFT trainer
# Default (rounds, steps per turn) per model: the cheap models' steps spread by 10-30% (shared
# CPU, allocator, warm-up), so more and longer turns; a Qwen-shaped step takes seconds to tens of
# seconds and spreads less, so one step per turn.
TURNS = {"tiny": (5, 3), "small": (4, 3), "qwen": (3, 1)}


def main_table_specs(quick: bool) -> list[Spec]:
    """The workloads of the main table. The small model gets smaller batches, the Qwen-shaped one
    small ones sized so a step takes at most ~20 s on 2 cores (its LM head is most of the cost)."""
    specs = []
    for model in ("tiny",) if quick else ("tiny", "small"):
        batch = {"tiny": 16, "small": 8}[model]
        specs += [
            Spec("sft", model, batch_size=batch),
            Spec("dpo", model, batch_size=batch // 2),
            Spec("aft", model, batch_size=batch // 4),  # questions, each with 5 chains
            Spec("rm", model, batch_size=batch // 2),
            Spec("rloo", model, batch_size=batch // 2, max_new_tokens=48),
            Spec("grpo", model, batch_size=batch // 2, max_new_tokens=48),  # RLOO's prompts, samples and lengths
            Spec("generate", model, batch_size=batch // 2, max_new_tokens=48),
        ]
    if not quick:
        # Math-like rows (prompt ~100, response ~150 tokens) and preference-like ones (~200, 200-400).
        math, preference = dict(max_length=512, num_train=64), dict(max_length=1024, num_train=64)
        specs += [
            Spec("sft", "qwen", batch_size=4, **math),
            Spec("dpo", "qwen", batch_size=1, **preference),
            Spec("aft", "qwen", batch_size=1, **math),
            Spec("rm", "qwen", batch_size=4, **preference),
            Spec("rloo", "qwen", batch_size=1, max_new_tokens=64, **math),
            Spec("grpo", "qwen", batch_size=1, max_new_tokens=64, **math),
        ]
    return specs


def selected(spec: Spec, only: list[str] | None) -> bool:
    """Whether ``--only``'s patterns pick the spec: a workload (``dpo``), a model (``qwen``) or
    ``workload-model`` with shell wildcards (``dpo-qwen``, ``*-small``)."""
    if not only:
        return True
    key = f"{spec.workload}-{spec.model}"
    return any(p in (spec.workload, spec.model) or fnmatch.fnmatchcase(key, p) for p in only)


def scaling_specs(quick: bool) -> list[tuple[str, Spec]]:
    """(axis, spec): arithmetic steps (sequence length) and batch size, tiny model."""
    steps, batches = ((2, 8), (4, 16)) if quick else ((2, 4, 8, 16), (4, 8, 16, 32))
    out = []
    for workload in ("sft", "dpo"):
        base = 16 if workload == "sft" else 8
        out += [("length", Spec(workload, "tiny", batch_size=base, steps=s)) for s in steps]
        out += [("batch", Spec(workload, "tiny", batch_size=b if workload == "sft" else b // 2)) for b in batches]
    return out


class Worker:
    """One contender's process: send it a block size, read back its step times."""

    def __init__(self, contender: str, spec: Spec, log: Path) -> None:
        self.contender, self.log = contender, log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, str(TOOLS / "bench_setup.py"), contender, json.dumps(asdict(spec))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=TOOLS,
        )  # fmt: skip
        self.times: list[float] = []
        self.peak_rss_mb = 0.0

    def ask(self, steps: int | None) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("stop\n" if steps is None else f"{steps}\n")
        self.proc.stdin.flush()

    def read(self) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.contender} worker died; see {self.log.name}")
        reply = json.loads(line)
        self.times += reply["times"]
        self.peak_rss_mb = reply["peak_rss_mb"]


def measure(spec: Spec, contenders: list[str], rounds: int, block: int, logs: Path) -> dict[str, dict]:
    """Median step time and peak RSS of each contender, timed in turns."""
    prepare(spec)  # files the workers read (the Qwen-shaped model and rows), written once
    workers = [Worker(c, spec, logs / f"{spec.name}-{c}.log") for c in contenders]
    try:
        for w in workers:  # built and warmed up side by side; nothing is timed yet
            w.read()
        for _ in range(rounds):
            for w in workers:  # one at a time: the others wait at their gate
                w.ask(block)
                w.read()
    finally:
        for w in workers:
            if w.proc.poll() is None:
                w.ask(None)
                w.proc.wait(timeout=60)
    return {w.contender: {"median_s": statistics.median(w.times), "times": w.times,
                          "peak_rss_mb": w.peak_rss_mb} for w in workers}  # fmt: skip


def tokens_per_step(spec: Spec) -> float:
    """Mean real (unpadded) tokens a step trains on: (bos) + prompt + response + eos per sequence,
    as lit_align encodes them, times the sequences a step trains on."""
    tok = tokenizer(spec)

    def length(prompt: str, response: str) -> int:
        encoded = encode_prompt_response(tok, prompt, response, spec.max_length // 2, spec.max_length)
        return len(encoded["input_ids"])

    if spec.workload == "sft":
        lengths = [length(r["prompt"], r["response"]) for r in rows(spec, tok, "sft")]
    elif spec.workload == "aft":
        lengths = [length(r["prompt"], c["text"]) for r in rows(spec, tok, "groups") for c in r["responses"]]
    else:
        lengths = [length(r["prompt"], r[k]) for r in rows(spec, tok, "pairs") for k in ("chosen", "rejected")]
    return statistics.fmean(lengths) * spec.rows_per_step


def throughput(result: dict, median_s: float) -> tuple[float, str]:
    """Training tokens/s for SFT, DPO, AFT and RM; samples/s for RLOO, GRPO and generation."""
    if result["tokens_per_step"]:
        return result["tokens_per_step"] / median_s, "tokens/s"
    spec = Spec(**result["spec"])
    return spec.batch_size * spec.num_samples / median_s, "samples/s"


def markdown(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(cells) + " |" for cells in (header, *rows)]
    return "\n".join([lines[0], "|" + "---|" * len(header), *lines[1:]])


def table(results: list[dict]) -> str:
    """One row per workload and contender, with the ratios to TRL and to the bare loop."""
    header = ["workload", "model", "contender", "median step (ms)", "steps (min–max ms)", "throughput",
              "peak RSS (MB)", "speed × TRL", "step / bare", "RSS / TRL"]  # fmt: skip
    rows = []
    for r in results:
        spec, by = Spec(**r["spec"]), r["contenders"]
        trl, bare = by.get("trl"), by.get("bare")
        for c, m in by.items():
            value, unit = throughput(r, m["median_s"])
            shown = f"{value:,.0f}" if value >= 10 else f"{value:.2g}"  # a Qwen-shaped RLOO: 0.2 samples/s
            spread = f"{1000 * min(m['times']):.0f}–{1000 * max(m['times']):.0f}" if m.get("times") else ""
            rows.append([
                spec.workload, spec.model, NAMES[c], f"{1000 * m['median_s']:.0f}", spread, f"{shown} {unit}",
                f"{m['peak_rss_mb']:.0f}",
                f"{trl['median_s'] / m['median_s']:.2f}" if trl else "",
                f"{m['median_s'] / bare['median_s']:.2f}" if bare else "",
                f"{m['peak_rss_mb'] / trl['peak_rss_mb']:.2f}" if trl else "",
            ])  # fmt: skip
    return markdown(header, rows)


def scaling_table(scaling: list[dict]) -> str:
    """One row per scaling point: lit_align's step against the bare loop's."""
    header = ["workload", "varied", "tokens per sequence", "sequences per step", "lit_align (ms)", "bare (ms)",
              "lit_align / bare"]  # fmt: skip
    rows = []
    for r in scaling:
        spec, by = Spec(**r["spec"]), r["contenders"]
        lit, bare = by["lit"]["median_s"], by["bare"]["median_s"]
        rows.append([
            spec.workload, r["axis"], f"{r['tokens_per_step'] / spec.rows_per_step:.0f}", str(spec.rows_per_step),
            f"{1000 * lit:.0f}", f"{1000 * bare:.0f}", f"{lit / bare:.2f}",
        ])  # fmt: skip
    return markdown(header, rows)


def plot(results: list[dict], scaling: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(10, 0.7 * len(results)), 4))
    labels = [f"{r['spec']['workload']}\n{r['spec']['model']}" for r in results]
    present = [c for c in NAMES if any(c in r["contenders"] for r in results)]
    width = 0.8 / len(present)
    for i, c in enumerate(present):
        # Step time relative to the bare loop: 1.0 is the floor, higher is slower.
        heights = [r["contenders"][c]["median_s"] / r["contenders"]["bare"]["median_s"]
                   if c in r["contenders"] and "bare" in r["contenders"] else 0 for r in results]  # fmt: skip
        offset = (i - (len(present) - 1) / 2) * width
        ax.bar([x + offset for x in range(len(results))], heights, width, label=NAMES[c])
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(results)), labels)
    ax.set_ylabel("median step time / bare loop's")
    ax.set_title("Step time relative to a bare PyTorch loop (lower is faster)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "bench.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, axis, xlabel in zip(axes, ("length", "batch"), ("mean tokens per sequence", "sequences per step"),
                                strict=True):  # fmt: skip
        if not scaling:
            ax.set_visible(False)
            continue
        for workload in ("sft", "dpo"):
            points = [r for r in scaling if r["axis"] == axis and r["spec"]["workload"] == workload]
            rows_per = [Spec(**r["spec"]).rows_per_step for r in points]
            xs = (
                [r["tokens_per_step"] / n for r, n in zip(points, rows_per, strict=True)]
                if axis == "length"
                else rows_per
            )
            for c, style in (("lit", "-o"), ("bare", "--s")):
                ys = [1000 * r["contenders"][c]["median_s"] for r in points if c in r["contenders"]]
                if ys:
                    ax.plot(xs, ys, style, label=f"{workload.upper()} {NAMES[c]}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("median step time (ms)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.legend()
    axes[0].set_title("against sequence length (tiny model)")
    axes[1].set_title("against batch size (tiny model)")
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=120)
    plt.close(fig)


def results_json(results: list[dict], scaling: list[dict], wall: float) -> str:
    """results.json with one workload per line: a rerun's diff is the lines of the workloads it
    measured (an indented dump puts every timed step on a line of its own)."""

    def lines(items: list[dict]) -> str:
        return "[\n" + ",\n".join(json.dumps(item) for item in items) + "\n]" if items else "[]"

    return f'{{"results": {lines(results)},\n"scaling": {lines(scaling)},\n"wall_s": {json.dumps(wall)}}}\n'


class Results:
    """The run's results so far, written after each workload: a line appended to results.jsonl,
    results.json and results.md rewritten. A partial run (``--only``) replaces its workloads in
    the previous results.json, read once at the start (later writes are this run's own)."""

    def __init__(self, out: Path, partial: bool) -> None:
        self.out, self.started = out, time.perf_counter()
        self.run = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        previous = out / "results.json"
        self.old = json.loads(previous.read_text()) if partial and previous.is_file() else None
        self.results: list[dict] = []
        self.scaling: list[dict] = []

    def add(self, result: dict, scaling: bool = False) -> None:
        (self.scaling if scaling else self.results).append(result)
        with (self.out / "results.jsonl").open("a") as lines:
            lines.write(json.dumps({"run": self.run, "table": "scaling" if scaling else "main", **result}) + "\n")
        self.write()

    def merged(self) -> tuple[list[dict], list[dict], float]:
        """(results, scaling, wall seconds) as results.json holds them."""
        results, scaling, wall = self.results, self.scaling, time.perf_counter() - self.started
        if self.old is not None:  # a partial rerun replaces its workloads in the last full run
            fresh = {Spec(**r["spec"]).name for r in results}
            results = [r for r in self.old["results"] if Spec(**r["spec"]).name not in fresh] + results
            scaling = scaling or self.old.get("scaling", [])
            wall = self.old.get("wall_s", 0.0)
        return results, scaling, wall

    def write(self) -> str:
        """Rewrites results.json and results.md; returns the Markdown."""
        results, scaling, wall = self.merged()
        (self.out / "results.json").write_text(results_json(results, scaling, wall))
        header = f"# tools/bench.py: {len(results)} workloads, {wall:.0f} s"
        if self.old is not None:  # say which rows are this run's: their conditions may differ
            names = ", ".join(Spec(**r["spec"]).name for r in self.results)
            header = (
                f"# tools/bench.py: {len(results)} workloads; {names or 'none'} rerun on {self.run} "
                f"({time.perf_counter() - self.started:.0f} s), the others from the previous run ({wall:.0f} s)"
            )
        text = [header, "", table(results)]
        if scaling:
            text += ["", "## Scaling (tiny model)", "", scaling_table(scaling)]
        (self.out / "results.md").write_text("\n".join(text) + "\n")
        return "\n".join(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/bench"))
    parser.add_argument("--quick", action="store_true", help="tiny model only, one round: a smoke run")
    parser.add_argument("--rounds", type=int, help=f"turns per contender (default per model: {TURNS})")
    parser.add_argument("--block", type=int, help="timed steps per turn (default per model)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before the first turn")
    parser.add_argument("--only", help="comma-separated workloads, models or workload-model patterns "
                        "(sft, qwen, dpo-qwen, '*-small'); results merge into an existing results.json")  # fmt: skip
    parser.add_argument("--contenders", default=",".join(CONTENDERS), help="which of lit, trl, bare")
    parser.add_argument("--lit-flat", action="store_true",
                        help="add lit_align with the flat forward (needs the model.shared_prefix switch)")  # fmt: skip
    parser.add_argument("--no-scaling", action="store_true")
    args = parser.parse_args(argv)
    only = args.only.split(",") if args.only else None
    contenders = args.contenders.split(",") + (["lit_flat"] if args.lit_flat else [])
    if "trl" in contenders and find_spec("trl") is None:
        contenders.remove("trl")
        print("TRL is not installed (pip install -e '.[bench]'): benchmarking without it", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    logs = args.out / "logs"
    logs.mkdir(exist_ok=True)
    saved = Results(args.out, partial=bool(only))

    def run(spec: Spec, who: list[str], turns: tuple[int, int]) -> dict:
        spec = replace(spec, extra={**spec.extra, "warmup": args.warmup})
        print(f"{spec.workload} · {spec.model} · batch {spec.batch_size} · steps {spec.steps}", file=sys.stderr)
        began = time.perf_counter()
        by = measure(spec, [c for c in who if not (c == "trl" and spec.workload in NO_TRL)], *turns, logs)
        tokens = tokens_per_step(spec) if spec.workload in ("sft", "dpo", "aft", "rm") else None
        return {"spec": asdict(spec), "tokens_per_step": tokens, "contenders": by,
                "wall_s": round(time.perf_counter() - began, 1)}  # fmt: skip

    def turns(spec: Spec) -> tuple[int, int]:
        rounds, block = (1, TURNS[spec.model][1]) if args.quick else TURNS[spec.model]
        return args.rounds or rounds, args.block or block

    for spec in main_table_specs(args.quick):
        if selected(spec, only):
            saved.add(run(spec, contenders, turns(spec)))
    if not args.no_scaling and (not only or "scaling" in only):
        for axis, spec in scaling_specs(args.quick):
            saved.add({"axis": axis, **run(spec, ["lit", "bare"], (1, args.block or 3))}, scaling=True)  # one turn each
    text = saved.write()
    results, scaling, wall = saved.merged()
    plot(results, scaling, args.out)
    print(text)
    print(f"wrote {args.out}/results.md, results.json, results.jsonl, bench.png, scaling.png in {wall:.0f} s",
          file=sys.stderr)  # fmt: skip


if __name__ == "__main__":
    main()

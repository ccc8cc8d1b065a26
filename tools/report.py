"""Tables and plots from run directories: ``python tools/report.py <run or sweep dir> [--out DIR]``.

Reads every ``summary.json`` under the directory (a run, a multirun sweep, an Optuna study, or a
folder of them), groups the runs by configuration (their command-line overrides from
``.hydra/overrides.yaml`` without ``seed``; runs without one by objective) and writes to
``--out`` (default: the directory itself):

- ``report.md``: one row per configuration, mean ± sample std over its seeds of the starting
  and final validation accuracy, the test accuracy and the best-of-N metrics, and the wall time;
- ``accuracy.png``: final test accuracy by configuration (bars: mean; points: seeds; the dashed
  mark: the mean starting validation accuracy);
- ``curves.png``: ``train/loss`` and ``val/accuracy`` by step from each run's ``metrics.csv``
  (thin: each seed; thick: the mean over seeds at the steps they share).

With ``--control <configuration>`` report.md also holds each configuration's paired gain over
the control run of the same seed with a 95% confidence interval (and ``gains.png``, the same as a
plot), and a table of peak memory, wall time, zero-variance groups, completion length and AFT's
chain scores (`tools/paired.py`). With ``--start
<summary.json>`` (the start model's run, for runs of `tools/from_start.sh`) it holds each
configuration's per-seed gain over that start. Each ``--contrast A B`` adds A's paired
difference from B with its interval (a claim's own comparison, e.g. AFT against RFT).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import yaml
from paired import SCORES, by_seed, contrast_table, interval, paired_table, start_table, training_table

# Final metrics shown when any run has them, in this order; start/val/accuracy comes first.
COLUMNS = ["val/accuracy", "test/accuracy", "eval/greedy_accuracy", "eval/pass@8", "eval/maj@8", "eval/bon@8"]
IGNORED = ("seed=", "hydra.", "paths.")


@dataclass
class Run:
    path: Path
    overrides: list[str]
    seed: int
    summary: dict
    curves: dict[str, dict[int, float]] = field(default_factory=dict)
    label: str = ""


def load_runs(root: Path) -> tuple[list[Run], list[str]]:
    """Every finished run under ``root`` (a directory with ``summary.json``), sorted by path,
    each labelled by the overrides that set it apart from the others; and the overrides all
    runs share."""
    runs = []
    for summary_path in sorted(root.rglob("summary.json")):
        run_dir = summary_path.parent
        if any(part.startswith(".") for part in run_dir.relative_to(root).parts):
            continue  # a hidden folder, e.g. a pipeline's cached SFT stage (LIT_ALIGN_CACHE inside the root)
        summary = json.loads(summary_path.read_text())
        runs.append(Run(run_dir, _overrides(run_dir), summary["seed"], summary, _curves(run_dir)))
    common = [o for o in runs[0].overrides if all(o in r.overrides for r in runs)] if runs else []
    for run in runs:
        kept = [o for o in run.overrides if o not in common]
        run.label = " ".join(kept) if kept else f"objective={run.summary['objective']}"
    return runs, common


def _overrides(run_dir: Path) -> list[str]:
    """The run's command-line overrides but ``seed``, ``hydra.*`` and ``paths.*``, numbers
    shortened to 3 significant digits (Optuna's trial values have 16)."""
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
    return [_short(o) for o in overrides or [] if not o.startswith(IGNORED)]


def _short(override: str) -> str:
    key, _, value = override.partition("=")
    try:
        number = float(value)
    except ValueError:
        return override
    return override if value.lstrip("-").isdigit() else f"{key}={number:.3g}"


# What a run's metrics.csv is read for: the curves plotted, and the rollouts' summaries of
# `paired.training_table`.
CURVES = ("train/loss", "val/accuracy", "rollout/frac_reward_zero_std", "rollout/completion_len", *SCORES)


def _curves(run_dir: Path) -> dict[str, dict[int, float]]:
    """``{metric: {step: value}}`` for `CURVES` (a step logged twice: the last)."""
    curves: dict[str, dict[int, float]] = {key: {} for key in CURVES}
    metrics_file = run_dir / "metrics.csv"
    if metrics_file.is_file():
        with metrics_file.open() as f:
            for row in csv.DictReader(f):
                for key, values in curves.items():
                    if row.get(key):
                        values[int(row["step"])] = float(row[key])
    return curves


def group(runs: list[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        groups[run.label].append(run)
    return dict(groups)


def mean_std(values: list[float]) -> str:
    """``mean ± std`` (sample std) to 3 decimals; one value alone, without ± ."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(groups: dict[str, list[Run]]) -> str:
    """The Markdown table: one row per configuration, in the order first found."""
    present = [c for c in COLUMNS if any(c in r.summary["final"] for runs in groups.values() for r in runs)]
    header = ["configuration", "seeds", "start val/accuracy", *present, "wall (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, runs in groups.items():
        cells = [f"`{label}`", ",".join(str(r.seed) for r in sorted(runs, key=lambda r: r.seed))]
        starts = [r.summary["start"]["val/accuracy"] for r in runs if "val/accuracy" in r.summary["start"]]
        cells.append(mean_std(starts) if starts else "")
        for column in present:
            values = [r.summary["final"][column] for r in runs if column in r.summary["final"]]
            cells.append(mean_std(values) if values else "")
        cells.append(f"{statistics.mean(r.summary['wall_time_s'] for r in runs):.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_accuracy(groups: dict[str, list[Run]], path: Path, metric: str = "test/accuracy") -> None:
    labels = [label for label, runs in groups.items() if any(metric in r.summary["final"] for r in runs)]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(labels)), 4.5))
    for i, label in enumerate(labels):
        values = [r.summary["final"][metric] for r in groups[label] if metric in r.summary["final"]]
        ax.bar(i, statistics.mean(values), color="tab:blue", alpha=0.6)
        ax.scatter([i] * len(values), values, color="black", s=12, zorder=3)
        starts = [r.summary["start"]["val/accuracy"] for r in groups[label] if "val/accuracy" in r.summary["start"]]
        if starts:
            ax.hlines(statistics.mean(starts), i - 0.4, i + 0.4, colors="tab:red", linestyles="dashed")
    ax.set_xticks(range(len(labels)), [label.replace(" ", "\n") for label in labels], fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} by configuration (bars: mean, dots: seeds, dashed: start val/accuracy)", fontsize=9)
    ax.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(groups: dict[str, list[Run]], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (label, runs), color in zip(groups.items(), colors * 10, strict=False):
        for ax, metric in zip(axes, ("train/loss", "val/accuracy"), strict=True):
            curves = [r.curves[metric] for r in runs if r.curves[metric]]
            for curve in curves:
                ax.plot(list(curve), list(curve.values()), color=color, alpha=0.3, linewidth=0.8)
            shared = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
            if shared:
                ax.plot(shared, [statistics.mean(c[s] for c in curves) for s in shared], color=color, label=label)
    for ax, metric in zip(axes, ("train/loss", "val/accuracy"), strict=True):
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(metric)
    axes[0].set_title("train/loss (each objective's own loss: scales differ; RL losses can be < 0)", fontsize=9)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_gains(groups: dict[str, list[Run]], control: str, path: Path, metric: str = "test/accuracy") -> None:
    """Each configuration's paired gain over ``control`` (same seed): dots per seed, the mean
    and its 95% t interval as an error bar; the zero line is the control."""
    base = by_seed(groups[control], metric)
    rows = []
    for label, runs in groups.items():
        if label == control:
            continue
        gains = [value - base[s] for s, value in by_seed(runs, metric).items() if s in base]
        if gains:
            rows.append((label, gains, interval(gains)))
    fig, ax = plt.subplots(figsize=(7.5, max(3.0, 0.45 * len(rows) + 1.2)))
    for i, (_, gains, (mean, low, high)) in enumerate(rows):
        ax.scatter(gains, [i] * len(gains), color="tab:gray", s=10, zorder=2)
        if low == low:  # one seed alone has no interval (nan)
            ax.errorbar(mean, i, xerr=[[mean - low], [high - mean]], fmt="o", color="tab:blue", capsize=3, zorder=3)
        else:
            ax.scatter([mean], [i], color="tab:blue", zorder=3)
    ax.axvline(0.0, color="tab:red", linestyle="dashed", linewidth=1)
    ax.set_yticks(range(len(rows)), [label for label, _, _ in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"{metric} gain over the control, paired by seed")
    ax.set_title(f"mean and 95% CI (blue), seeds (gray)\ndashed: the control, {control}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(
    root: Path, out: Path | None = None, control: str | None = None, metric: str = "test/accuracy",
    start: Path | None = None, contrasts: list[tuple[str, str]] | None = None,
) -> str:  # fmt: skip
    """Writes report.md, accuracy.png and curves.png for the runs under ``root``; returns the
    tables (with ``control``: the paired gains and the training table too; with ``start``, a
    run's ``summary.json``: the gains over that run's final ``metric``)."""
    runs, common = load_runs(root)
    if not runs:
        raise SystemExit(f"no summary.json under {root}")
    out = out or root
    out.mkdir(parents=True, exist_ok=True)
    groups = group(runs)
    text = table(groups)
    if start is not None:
        text += "\n" + start_table(groups, json.loads(start.read_text())["final"][metric], metric)
    if control is not None:
        text += "\n" + paired_table(groups, control, metric) + "\n" + training_table(groups)
    if contrasts:
        text += "\n" + contrast_table(groups, contrasts, metric)
    shared = f" All with `{' '.join(common)}`." if common else ""
    # Relative to where the command ran: a committed report names no machine's directories.
    shown = Path(os.path.relpath(root.resolve(), Path.cwd())).as_posix()
    (out / "report.md").write_text(f"{len(runs)} runs under `{shown}`.{shared}\n\n{text}")
    plot_accuracy(groups, out / "accuracy.png")
    plot_curves(groups, out / "curves.png")
    if control is not None:
        plot_gains(groups, control, out / "gains.png", metric)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="a run, sweep or study directory")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: root)")
    parser.add_argument("--control", default=None, help="a configuration's label: paired gains over it")
    parser.add_argument("--metric", default="test/accuracy", help="the metric the paired gains compare")
    parser.add_argument("--start", type=Path, default=None, help="the start model's summary.json: gains over it")
    parser.add_argument(
        "--contrast",
        nargs=2,
        action="append",
        metavar=("A", "B"),
        default=None,
        help="two configurations' labels: A's paired difference from B (repeatable)",
    )
    args = parser.parse_args()
    contrasts = [tuple(c) for c in args.contrast or []]
    print(report(args.root, args.out, args.control, args.metric, args.start, contrasts), end="")


if __name__ == "__main__":
    main()

"""Paired comparisons for tools/report.py: each configuration's gain over a control run with the
same seed, with a 95% confidence interval, and the training curves' summaries RL tables need.

Seeds pair the runs: a method and its control share a seed, hence (with a shared start) the same
data order, so the seed-to-seed spread the two have in common cancels in the difference. The
interval is Student's t over the per-seed differences (n − 1 degrees of freedom): with 3 seeds
t = 4.30, with 5 seeds 2.78 — few seeds buy a wide interval, and the table says so rather than
hide it behind a mean ± std.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Protocol

from scipy.stats import t as student_t


class RunLike(Protocol):
    seed: int
    summary: dict
    curves: dict[str, dict[int, float]]  # `report.CURVES` from the run's metrics.csv


def interval(differences: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)`` of the per-seed differences: mean ± t_{(1+level)/2, n−1} · s / √n.
    One difference alone has no interval (low = high = nan)."""
    mean = statistics.fmean(differences)
    if len(differences) < 2:
        return mean, math.nan, math.nan
    half = student_t.ppf((1 + level) / 2, len(differences) - 1) * statistics.stdev(differences)
    half /= math.sqrt(len(differences))
    return mean, mean - half, mean + half


def signed(value: float) -> str:
    return f"{value:+.3f}".replace("-", "−")


def by_seed(runs: Sequence[RunLike], metric: str) -> dict[int, float]:
    """``{seed: final metric}`` of the runs that logged ``metric``: what a paired difference pairs."""
    return {r.seed: r.summary["final"][metric] for r in runs if metric in r.summary["final"]}


def with_interval(differences: Sequence[float]) -> str:
    """The mean difference and, from 2 seeds on, its 95% interval: ``+0.012 [+0.003, +0.021]``."""
    mean, low, high = interval(differences)
    return signed(mean) + ("" if math.isnan(low) else f" [{signed(low)}, {signed(high)}]")


def paired_table(groups: dict[str, Sequence[RunLike]], control: str, metric: str = "test/accuracy") -> str:
    """One row per configuration but ``control``: its per-seed gain in ``metric`` over the control
    run of the same seed, and the mean gain with its 95% interval. Seeds without a control run
    are left out (and counted)."""
    if control not in groups:
        raise SystemExit(f"--control {control!r} is none of the configurations: {sorted(groups)}")
    base = by_seed(groups[control], metric)
    title = f"Paired gain over `{control}` (per seed: {', '.join(f'{s}: {base[s]:.3f}' for s in sorted(base))}):"
    return _gains(groups, base, title, metric, skip=control)


def start_table(groups: dict[str, Sequence[RunLike]], start: float, metric: str = "test/accuracy") -> str:
    """Each configuration's per-seed gain in ``metric`` over the start model every run began
    from (one model, so one value for every seed), with the mean gain's 95% interval."""
    seeds = {r.seed for runs in groups.values() for r in runs}
    return _gains(groups, dict.fromkeys(seeds, start), f"Gain over the start ({metric} {start:.3f}):", metric)


def _gains(groups: dict[str, Sequence[RunLike]], base: dict[int, float], title: str, metric: str,
           skip: str | None = None) -> str:  # fmt: skip
    seeds = sorted(base)
    header = ["configuration", *(f"seed {s}" for s in seeds), f"mean gain [95% CI] in {metric}", "n"]
    lines = [title, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, runs in groups.items():
        if label == skip:
            continue
        gains = {s: value - base[s] for s, value in by_seed(runs, metric).items() if s in base}
        if not gains:
            continue
        shown = with_interval(list(gains.values()))
        cells = [f"`{label}`", *(signed(gains[s]) if s in gains else "" for s in seeds), shown, str(len(gains))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def contrast_table(groups: dict[str, Sequence[RunLike]], contrasts: Sequence[tuple[str, str]],
                   metric: str = "test/accuracy") -> str:  # fmt: skip
    """One row per ``(a, b)``: configuration a's per-seed difference in ``metric`` from
    configuration b's run of the same seed, and the mean difference with its 95% interval (a
    claim's own test, e.g. AFT against RFT, rather than each against the control)."""
    header = ["contrast", "per seed", f"mean difference [95% CI] in {metric}", "n"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for a, b in contrasts:
        for label in (a, b):
            if label not in groups:
                raise SystemExit(f"--contrast {label!r} is none of the configurations: {sorted(groups)}")
        base = by_seed(groups[b], metric)
        diffs = {s: value - base[s] for s, value in by_seed(groups[a], metric).items() if s in base}
        if not diffs:
            continue
        per_seed = " ".join(signed(diffs[s]) for s in sorted(diffs))
        lines.append(f"| `{a}` − `{b}` | {per_seed} | {with_interval(list(diffs.values()))} | {len(diffs)} |")
    return "\n".join(lines) + "\n"


# AFT's per-token chain scores (`aft/pos_score` …): where the alignment term moves each kind.
SCORES = ("aft/pos_score", "aft/neg_score", "aft/reference_score")


def training_table(groups: dict[str, Sequence[RunLike]]) -> str:
    """Per configuration, means over seeds of what a run's training did besides its accuracy:
    peak RSS, wall time; for online runs the share of zero-variance groups over all rollouts and
    the mean completion length at the first and the last rollout; for AFT runs the mean
    per-token log-likelihood of the positive, negative and gold chains of its training batches,
    first → last (each the mean of a run's first or last 3 logged steps: one step's batch is
    8 questions)."""
    header = ["configuration", "peak RSS (MB)", "wall (s)", "zero-variance groups", "completion length first → last"]
    scored = any(r.curves.get(SCORES[0]) for runs in groups.values() for r in runs)
    if scored:
        header.append("chain score first → last: positive / negative / gold")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, runs in groups.items():
        rss = [r.summary["peak_rss_mb"] for r in runs if "peak_rss_mb" in r.summary]
        cells = [f"`{label}`", f"{statistics.fmean(rss):.0f}" if rss else ""]
        cells.append(f"{statistics.fmean(r.summary['wall_time_s'] for r in runs):.0f}")
        zero = [statistics.fmean(c.values()) for r in runs if (c := r.curves["rollout/frac_reward_zero_std"])]
        cells.append(f"{statistics.fmean(zero):.2f}" if zero else "")
        cells.append(_first_last(runs, "rollout/completion_len", 1, "{:.1f}"))
        if scored:
            cells.append(" / ".join(_first_last(runs, key, 3, "{:.4f}") or "–" for key in SCORES))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _first_last(runs: Sequence[RunLike], key: str, width: int, form: str) -> str:
    """``first → last`` of a curve, each the mean of its first or last ``width`` values, then
    the mean over runs; empty where no run logged it."""
    curves = [[c[step] for step in sorted(c)] for r in runs if (c := r.curves.get(key))]
    if not curves:
        return ""
    first = statistics.fmean(statistics.fmean(c[:width]) for c in curves)
    last = statistics.fmean(statistics.fmean(c[-width:]) for c in curves)
    return f"{form.format(first)} → {form.format(last)}".replace("-", "−")

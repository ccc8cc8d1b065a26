"""tools/report.py: runs grouped by what sets them apart, mean ± std over seeds, and the plots."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from report import load_runs, report


def _run(root: Path, name: str, overrides: list[str], seed: int, start: float, val: float, test: float) -> None:
    run_dir = root / name
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in [*overrides, f"seed={seed}"]))
    summary = {"objective": "dpo", "seed": seed, "start": {"val/accuracy": start},
               "final": {"val/accuracy": val, "test/accuracy": test}, "wall_time_s": 10.0 + seed}  # fmt: skip
    (run_dir / "summary.json").write_text(json.dumps(summary))
    with (run_dir / "metrics.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "train/loss", "val/accuracy"])
        writer.writerows([[0, 2.0 - seed / 10, ""], [1, 1.0, ""], [1, "", val]])


@pytest.fixture
def sweep(tmp_path):
    for i, (experiment, lr) in enumerate([("sft", "3e-3"), ("dpo", "0.00051763404298")]):
        for seed, (val, test) in enumerate([(0.5, 0.6), (0.7, 0.8), (0.6, 0.7)]):
            _run(tmp_path, f"{i}{seed}", [f"experiment={experiment}", f"optimizer.lr={lr}", "data.digits=2"],
                 seed, 0.4, val + i / 10, test)  # fmt: skip
    _run(tmp_path, ".sft_cache/sft-abc", ["data.digits=2"], 0, 0.0, 0.0, 0.0)  # a cached stage: left out
    return tmp_path


def test_runs_are_labelled_by_what_sets_them_apart(sweep):
    runs, common = load_runs(sweep)
    assert common == ["data.digits=2"] and len(runs) == 6
    assert {r.label for r in runs} == {"experiment=sft optimizer.lr=0.003", "experiment=dpo optimizer.lr=0.000518"}


def test_table_is_mean_and_std_over_seeds_and_plots_are_written(sweep, tmp_path):
    text = report(sweep, tmp_path / "out")
    # val 0.5, 0.7, 0.6 (+0.1 for the second): mean 0.6, sample std 0.1; test 0.6, 0.8, 0.7.
    assert text.splitlines()[2:] == [
        "| `experiment=sft optimizer.lr=0.003` | 0,1,2 | 0.400 ± 0.000 | 0.600 ± 0.100 | 0.700 ± 0.100 | 11 |",
        "| `experiment=dpo optimizer.lr=0.000518` | 0,1,2 | 0.400 ± 0.000 | 0.700 ± 0.100 | 0.700 ± 0.100 | 11 |",
    ]
    assert (tmp_path / "out/report.md").read_text().startswith("6 runs under ")


def test_the_report_names_the_runs_relative_to_where_it_ran(sweep, tmp_path, monkeypatch):
    monkeypatch.chdir(sweep.parent)
    report(sweep.resolve(), tmp_path / "out")  # given an absolute path
    first = (tmp_path / "out/report.md").read_text().splitlines()[0]
    assert first == f"6 runs under `{sweep.name}`. All with `data.digits=2`."
    for name in ("accuracy.png", "curves.png"):
        with Image.open(tmp_path / "out" / name) as image:
            assert image.format == "PNG" and image.width > 600


def test_paired_gains_have_a_t_interval_over_seeds(tmp_path):
    # Control test accuracy 0.6, 0.8, 0.7; the method 0.65, 0.82, 0.77: gains +0.05, +0.02, +0.07,
    # mean 0.0467, s = 0.02517, t(0.975, 2) = 4.3027: half-width 4.3027 · 0.02517 / √3 = 0.0625.
    for seed, (control, method) in enumerate([(0.6, 0.65), (0.8, 0.82), (0.7, 0.77)]):
        _run(tmp_path, f"c{seed}", ["objective=sft"], seed, 0.4, 0.5, control)
        _run(tmp_path, f"m{seed}", ["objective=kto"], seed, 0.4, 0.5, method)
    text = report(tmp_path, tmp_path / "out", control="objective=sft", contrasts=[("objective=sft", "objective=kto")])
    assert "| `objective=kto` | +0.050 | +0.020 | +0.070 | +0.047 [−0.016, +0.109] | 3 |" in text.splitlines()
    # A contrast is the same paired difference, either way round.
    contrast = "| `objective=sft` − `objective=kto` | −0.050 −0.020 −0.070 | −0.047 [−0.109, +0.016] | 3 |"
    assert contrast in text.splitlines()


def test_the_training_table_summarises_rollouts_and_memory(tmp_path):
    for seed in (0, 1):
        _run(tmp_path, f"r{seed}", ["objective=grpo"], seed, 0.4, 0.5, 0.6)
        summary = json.loads((tmp_path / f"r{seed}/summary.json").read_text())
        (tmp_path / f"r{seed}/summary.json").write_text(json.dumps(summary | {"peak_rss_mb": 500.0 + 100 * seed}))
        with (tmp_path / f"r{seed}/metrics.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", "rollout/frac_reward_zero_std", "rollout/completion_len"])
            writer.writerows([[0, 0.5, 40.0 + seed], [1, "", ""], [2, 0.3, 30.0 + seed]])
    _run(tmp_path, "s0", ["objective=sft"], 0, 0.4, 0.5, 0.5)
    text = report(tmp_path, tmp_path / "out", control="objective=sft")
    # zero-variance share: the mean over rollouts (0.4), then over seeds; lengths: first 40.5, last 30.5.
    assert "| `objective=grpo` | 550 | 10 | 0.40 | 40.5 → 30.5 |" in text.splitlines()


def test_aft_chain_scores_first_to_last_and_the_gains_plot(tmp_path):
    for seed in (0, 1):
        _run(tmp_path, f"a{seed}", ["objective=aft"], seed, 0.4, 0.5, 0.6 + seed / 10)
        with (tmp_path / f"a{seed}/metrics.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", "aft/pos_score", "aft/neg_score", "aft/reference_score"])
            # 4 logged steps, first 3 and last 3; seed 1's positive ends at −0.5 (its last 3: −0.833).
            writer.writerows([[s, -1.0 + (0.5 * seed if s == 3 else 0.0), -2.0 - s, ""] for s in range(4)])
        _run(tmp_path, f"c{seed}", ["objective=sft"], seed, 0.4, 0.5, 0.6)
    text = report(tmp_path, tmp_path / "out", control="objective=sft")
    # Over seeds: positive −1 → (−1 − 0.833)/2 = −0.917; negative (−2−3−4)/3 = −3 → −4; gold: never logged.
    assert "| `objective=aft` |  | 10 |  |  | −1.0000 → −0.9167 / −3.0000 → −4.0000 / – |" in text.splitlines()
    assert "+0.050 [−0.585, +0.685]" in text
    with Image.open(tmp_path / "out" / "gains.png") as image:
        assert image.format == "PNG"


def test_gains_over_a_shared_start_per_seed(tmp_path):
    # Every run began from one start with test accuracy 0.6: gains +0.05, +0.22, +0.17, mean 0.1467,
    # s = 0.08737, half-width 4.3027 · 0.08737 / √3 = 0.2170.
    for seed, method in enumerate([0.65, 0.82, 0.77]):
        _run(tmp_path, f"m{seed}", ["objective=grpo"], seed, 0.4, 0.5, method)
    (tmp_path / "start.json").write_text(json.dumps({"final": {"test/accuracy": 0.6}}))
    text = report(tmp_path / "m0", tmp_path / "out0")  # one run: no start table without --start
    assert "Gain over the start" not in text
    text = report(tmp_path, tmp_path / "out", start=tmp_path / "start.json")
    assert "Gain over the start (test/accuracy 0.600):" in text
    # One configuration: its label is the summary's objective (the common override is in the header).
    assert "| `objective=dpo` | +0.050 | +0.220 | +0.170 | +0.147 [−0.070, +0.364] | 3 |" in text.splitlines()

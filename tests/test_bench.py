"""tools/bench.py's timing protocol and arithmetic (the runs themselves are `-m slow`)."""

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"
sys.path.insert(0, str(TOOLS))
import bench  # noqa: E402
import bench_setup  # noqa: E402


class Exited(Exception):
    pass


def test_gate_times_each_step_begin_to_begin_in_paced_blocks(monkeypatch):
    """Warm-up steps are untimed; each block's times come back, then the worker waits."""
    monkeypatch.setattr(bench_setup.os, "_exit", lambda code: (_ for _ in ()).throw(Exited(code)))
    replies = io.StringIO()
    gate = bench_setup.Gate(warmup=2, commands=io.StringIO("2\n1\nstop\n"), replies=replies)
    sleeps = [0.0, 0.0, 0.02, 0.04, 0.03]  # steps 1-2 warm up; 3-4 are block one, 5 block two
    with pytest.raises(Exited):
        for seconds in sleeps:
            gate.step_begin()
            time.sleep(seconds)
        gate.step_begin()  # ends step 5, replies, reads "stop"
    lines = [json.loads(line) for line in replies.getvalue().splitlines()]
    assert [len(r["times"]) for r in lines] == [0, 2, 1]  # ready, block one, block two
    assert lines[1]["times"] == pytest.approx([0.02, 0.04], abs=0.01)
    assert lines[2]["times"] == pytest.approx([0.03], abs=0.01)
    assert all(r["peak_rss_mb"] > 0 for r in lines)


def test_table_ratios_are_against_trl_and_the_bare_loop():
    result = {
        "spec": {"workload": "sft", "model": "tiny", "batch_size": 16},
        "tokens_per_step": 2000.0,
        "contenders": {
            "lit": {"median_s": 0.5, "peak_rss_mb": 800.0},
            "trl": {"median_s": 0.75, "peak_rss_mb": 1000.0},
            "bare": {"median_s": 0.4, "peak_rss_mb": 700.0},
        },
    }
    rows = bench.table([result]).splitlines()[2:]
    lit = [cell.strip() for cell in rows[0].split("|")[1:-1]]
    # workload, model, contender, ms, throughput, RSS, speed × TRL, step / bare, RSS / TRL
    assert lit == ["sft", "tiny", "lit_align", "500", "4,000 tokens/s", "800", "1.50", "1.25", "0.80"]
    rloo = {**result, "spec": {"workload": "rloo", "model": "tiny", "batch_size": 8}, "tokens_per_step": None}
    assert "| 64 samples/s |" in bench.table([rloo]).splitlines()[2]  # 8 prompts × 4 samples in 0.5 s
    assert bench.throughput(rloo, 2.0) == (16.0, "samples/s")


def test_contenders_get_the_same_rows_and_weights():
    spec = bench_setup.Spec("dpo", num_train=16)
    tok = bench_setup.tokenizer()
    a, b = bench_setup.build_model(spec, tok), bench_setup.build_model(spec, tok)
    assert all((p == q).all() for p, q in zip(a.parameters(), b.parameters(), strict=True))
    rows = bench_setup.rows(spec, tok, "pairs")
    assert len(rows) == 16 and rows == bench_setup.rows(spec, tok, "pairs")
    assert {"prompt", "chosen", "rejected"} <= set(rows[0])


@pytest.mark.slow
def test_quick_bench_writes_table_and_plots(tmp_path):
    """The smoke run end to end (TRL too when installed): ~5 minutes on 2 cores."""
    subprocess.run([sys.executable, str(TOOLS / "bench.py"), "--quick", "--out", str(tmp_path)], check=True)
    text = (tmp_path / "results.md").read_text()
    assert text.count("| sft | tiny |") >= 2 and "## Scaling" in text
    assert (tmp_path / "bench.png").stat().st_size > 0 and (tmp_path / "scaling.png").stat().st_size > 0

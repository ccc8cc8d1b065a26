"""tools/bench.py's timing protocol and arithmetic (the runs themselves are `-m slow`)."""

import io
import json
import math
import subprocess
import sys
import time
from dataclasses import asdict, replace
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch

TOOLS = Path(__file__).resolve().parents[1] / "tools"
sys.path.insert(0, str(TOOLS))
import bench  # noqa: E402
import bench_bare  # noqa: E402
import bench_qwen  # noqa: E402
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
    # A step lasts at least its sleep; a loaded machine (other jobs on the cores) may add to it.
    for got, slept in zip(lines[1]["times"] + lines[2]["times"], [0.02, 0.04, 0.03], strict=True):
        assert slept <= got < slept + 0.1
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
    result["contenders"]["lit"]["times"] = [0.45, 0.5, 0.62]
    rows = bench.table([result]).splitlines()[2:]
    lit = [cell.strip() for cell in rows[0].split("|")[1:-1]]
    # workload, model, contender, ms, spread, throughput, RSS, speed × TRL, step / bare, RSS / TRL
    assert lit == ["sft", "tiny", "lit_align", "500", "450–620", "4,000 tokens/s", "800", "1.50", "1.25", "0.80"]
    aft = {**result, "spec": {"workload": "aft", "model": "qwen", "batch_size": 1}}
    aft["contenders"] = {c: result["contenders"][c] for c in ("lit", "bare")}  # TRL has no AFT
    cells = [cell.strip() for cell in bench.table([aft]).splitlines()[2].split("|")[1:-1]]
    assert cells[-3:] == ["", "1.25", ""]
    rloo = {**result, "spec": {"workload": "rloo", "model": "tiny", "batch_size": 8}, "tokens_per_step": None}
    assert "| 64 samples/s |" in bench.table([rloo]).splitlines()[2]  # 8 prompts × 4 samples in 0.5 s
    assert bench.throughput(rloo, 2.0) == (16.0, "samples/s")
    slow = {**rloo, "spec": {**rloo["spec"], "batch_size": 1}}
    slow["contenders"] = {"lit": {"median_s": 15.0, "peak_rss_mb": 800.0}}
    assert "| 0.27 samples/s |" in bench.table([slow]).splitlines()[2]  # 1 prompt × 4 samples in 15 s


def test_contenders_get_the_same_rows_and_weights():
    spec = bench_setup.Spec("dpo", num_train=16)
    tok = bench_setup.tokenizer()
    a, b = bench_setup.build_model(spec, tok), bench_setup.build_model(spec, tok)
    assert all((p == q).all() for p, q in zip(a.parameters(), b.parameters(), strict=True))
    rows = bench_setup.rows(spec, tok, "pairs")
    assert len(rows) == 16 and rows == bench_setup.rows(spec, tok, "pairs")
    assert {"prompt", "chosen", "rejected"} <= set(rows[0])


def test_only_picks_workloads_models_and_patterns():
    specs = bench.main_table_specs(quick=False)
    qwen = ("sft", "dpo", "aft", "rm", "rloo", "grpo")
    assert {(s.workload, s.model) for s in specs} >= {(w, "qwen") for w in qwen}
    pick = lambda only: {f"{s.workload}-{s.model}" for s in specs if bench.selected(s, only)}  # noqa: E731
    assert pick(["dpo-qwen"]) == {"dpo-qwen"}
    assert pick(["aft"]) == {"aft-tiny", "aft-small", "aft-qwen"}
    assert pick(["grpo"]) == {"grpo-tiny", "grpo-small", "grpo-qwen"}
    assert pick(["qwen", "sft-t*"]) == {f"{w}-qwen" for w in qwen} | {"sft-tiny"}
    assert len(pick(None)) == len(specs)


def test_flat_aft_loss_is_the_objectives_formula():
    """Two groups, β = 0.1, w = 1. Group 1: chains (correct, wrong) scored (−1, −2): L_VFT = 1;
    the boundary B = −1 − 0.1 and T = 2B − s_p = −1.2, so L_A = log(1 + e^(−2+1) + e^(−1.2+2)).
    Group 2: (wrong, correct, reference) scored (−1.5, −2.5, −0.5): L_VFT = −mean(−2.5, −0.5) =
    1.5; the reference is not paired: B = −2.6, T = −2.7, L_A = log(1 + e^(1) + e^(−1.2))."""
    spec = bench_setup.Spec("aft")
    chain = lambda correct, reference=False: {"correct": correct, "reference": reference}  # noqa: E731
    groups = [[chain(True), chain(False)], [chain(False), chain(True), chain(True, reference=True)]]
    scores = torch.tensor([-1.0, -2.0, -1.5, -2.5, -0.5])
    one = 1 + math.log(1 + math.exp(-1) + math.exp(0.8))
    two = 1.5 + math.log(1 + math.exp(1) + math.exp(-1.2))
    torch.testing.assert_close(bench_bare.flat_aft_loss(spec, scores, groups), torch.tensor((one + two) / 2))


def test_grpo_is_rloos_workload_with_grpos_loss():
    """Each GRPO row of the table is its RLOO row's prompts, samples and lengths (the Qwen-shaped one
    the same file of rows), so the two read side by side."""
    specs = {(s.workload, s.model): s for s in bench.main_table_specs(quick=False)}
    for model in ("tiny", "small", "qwen"):
        assert specs["grpo", model] == replace(specs["rloo", model], workload="grpo")
    assert bench_qwen.data_file("grpo", 0, 64) == bench_qwen.data_file("rloo", 0, 64)
    assert bench_qwen.make_rows("grpo", 0, 4) == bench_qwen.make_rows("rloo", 0, 4)
    assert bench_qwen.lit_data_overrides("grpo", Path("x")) == bench_qwen.lit_data_overrides("rloo", Path("x"))


def test_bare_grpo_loss_by_hand():
    """One prompt, k = 2, rewards (1, 0): mean 0.5, Bessel std √0.5, A = ±a with a = 0.5 / (√0.5 + 1e-4).
    Responses of 2 and 1 tokens, log π = −1 everywhere, log π_ref = −1 but −2 on the first response's
    second token, where k3 = e^(−1) − (−1) − 1 = e^(−1). ρ = 1, so per token −A (+ β·k3): sequence 1
    −a + β·e^(−1)/2, sequence 2 a, L = β·e^(−1)/4. ∂L/∂log π: −a/4 and (−a + β(1 − e^(−1)))/4 on
    sequence 1 (½ per sequence × ½ per token), a/2 on sequence 2, 0 off the responses. An unscorable
    sample (NaN) leaves its group one sample, so both get A = 0 and L is the KL's alone."""
    beta, a = 0.04, 0.5 / (math.sqrt(0.5) + 1e-4)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    ref = torch.tensor([[-1.0, -2.0], [-1.0, -1.0]])
    logps = torch.full((2, 2), -1.0, requires_grad=True)
    loss = bench_bare.grpo_loss(logps, ref, mask, torch.tensor([1.0, 0.0]), 2, beta, 0.2)
    torch.testing.assert_close(loss, torch.tensor(beta * math.exp(-1) / 4))
    loss.backward()
    expected = [[-a / 4, (-a + beta * (1 - math.exp(-1))) / 4], [a / 2, 0.0]]
    torch.testing.assert_close(logps.grad, torch.tensor(expected))
    unscored = bench_bare.grpo_loss(logps, ref, mask, torch.tensor([float("nan"), 1.0]), 2, beta, 0.2)
    torch.testing.assert_close(unscored, torch.tensor(beta * math.exp(-1) / 4))


def test_each_workload_is_saved_as_it_finishes(tmp_path, monkeypatch):
    """A run stopped during its second workload keeps the first: a line in results.jsonl, its row in
    results.md and results.json, merged (``--only``) into the previous run's results."""
    fake = lambda median: {"median_s": median, "times": [median], "peak_rss_mb": 100.0}  # noqa: E731
    previous = {"spec": asdict(bench_setup.Spec("sft")), "tokens_per_step": 1000.0, "contenders": {"lit": fake(0.5)}}
    (tmp_path / "results.json").write_text(json.dumps({"results": [previous], "scaling": [], "wall_s": 9.0}))
    measured = []

    def measure(spec, contenders, rounds, block, logs):
        if measured:  # the run is stopped during the second workload
            raise KeyboardInterrupt
        measured.append(spec.workload)
        return {c: fake(2.0) for c in contenders}

    monkeypatch.setattr(bench, "measure", measure)
    with pytest.raises(KeyboardInterrupt):
        bench.main(["--out", str(tmp_path), "--only", "rloo-tiny,grpo-tiny", "--contenders", "lit,bare"])
    assert measured == ["rloo"]
    lines = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [(line["table"], line["spec"]["workload"]) for line in lines] == [("main", "rloo")]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["spec"]["workload"] for r in saved["results"]] == ["sft", "rloo"]
    workload_lines = [line for line in (tmp_path / "results.json").read_text().splitlines() if '"spec"' in line]
    assert len(workload_lines) == 2  # one line per workload: a rerun's diff is its own workloads
    text = (tmp_path / "results.md").read_text()
    assert "| sft | tiny | lit_align | 500 |" in text and "| rloo | tiny | bare PyTorch | 2000 |" in text


def test_aft_and_rm_rows_are_groups_of_five_and_pairs():
    tok = bench_setup.tokenizer()
    groups = bench_setup.rows(bench_setup.Spec("aft", num_train=16), tok, "groups")
    assert len(groups) == 16 and all(len(g["responses"]) == 5 for g in groups)
    assert [c["correct"] for c in groups[0]["responses"]] == [True, False, False, False, False]  # gold first
    pairs = bench_setup.rows(bench_setup.Spec("rm", num_train=16), tok, "pairs")
    assert pairs == bench_setup.rows(bench_setup.Spec("dpo", num_train=16), tok, "pairs")  # RM trains on DPO's pairs


@pytest.fixture(scope="module")
def qwen_cache(tmp_path_factory):
    """The word-level tokenizer and small row files in a fresh cache (no model: ~660 MB)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LIT_ALIGN_BENCH_CACHE", str(tmp_path_factory.mktemp("bench_cache")))
        bench_qwen.prepare(0, [(w, 6) for w in ("sft", "dpo", "aft")], model=False)
        yield


@pytest.mark.parametrize("workload", ["sft", "dpo", "aft"])
def test_qwen_rows_tokenise_to_their_ids_in_every_contender(qwen_cache, workload):
    """A row's text gives back its random ids: in lit_align's encoding, in TRL's (prompt and
    response joined as text, its eos appended as text) and in the bare loop's; no bos (Qwen2.5 has
    none), the eos is <|im_end|>; the training rows are the file's after the held-out ones."""
    spec = bench_setup.Spec(workload, "qwen", num_train=6, max_length=1024)
    tok = bench_setup.tokenizer(spec)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, len(tok)) == (None, 151_645, 151_643, 151_936)
    made = bench_qwen.make_rows(workload, 0, 6 + 2 * bench_qwen.HELD_OUT)[2 * bench_qwen.HELD_OUT :]
    fmt = {"sft": "sft", "dpo": "pairs", "aft": "groups"}[workload]
    dm = bench_setup.datamodule(spec, tok, fmt)
    train = dm.build_splits()["train"].to_list()
    assert len(train) == 6
    order = bench_setup.first_epoch_order(6, spec.seed)
    assert bench_setup.rows(spec, tok, fmt) == [train[i] for i in order]
    for row, intended in zip(train, made, strict=True):
        ids, lit = intended["ids"], dm._encode_train(row)  # lit_align's encoding of the row
        if workload == "sft":
            texts, responses, encoded = [row["response"]], [ids["response"]], [lit["input_ids"]]
        elif workload == "dpo":
            texts, responses = [row["chosen"], row["rejected"]], [ids["chosen"], ids["rejected"]]
            encoded = [lit["chosen_ids"], lit["rejected_ids"]]
        else:  # the four sampled chains, then the gold solution (a reference chain)
            texts, responses, encoded = [c["text"] for c in row["responses"]], ids["responses"], lit["sequences"]
            assert [c["reference"] for c in row["responses"]] == [False] * 4 + [True]
        assert lit["prompt_len"] == len(ids["prompt"]) and tok(row["prompt"])["input_ids"] == ids["prompt"]
        for text, response, lit_ids in zip(texts, responses, encoded, strict=True):
            full = ids["prompt"] + response + [tok.eos_token_id]
            assert lit_ids == full
            assert tok(row["prompt"] + text + tok.eos_token)["input_ids"] == full  # TRL's way
            assert bench_bare.encode(tok, row["prompt"], text) == (full, len(ids["prompt"]))


@pytest.mark.slow
def test_every_contender_runs_a_grpo_step(tmp_path):
    """GRPO in each contender's worker (TRL's GRPOTrainer when installed, lit_align flat too): no
    warm-up, one timed step of 2 prompts × 2 samples of up to 8 tokens; ~1 minute on 2 cores."""
    spec = bench_setup.Spec("grpo", batch_size=2, num_samples=2, max_new_tokens=8, num_train=16, extra={"warmup": 0})
    contenders = ["lit", "bare", "lit_flat"] + (["trl"] if find_spec("trl") else [])
    by = bench.measure(spec, contenders, rounds=1, block=1, logs=tmp_path)
    assert set(by) == set(contenders)
    assert all(len(m["times"]) == 1 and m["peak_rss_mb"] > 0 for m in by.values())


@pytest.mark.slow
def test_quick_bench_writes_table_and_plots(tmp_path):
    """The smoke run end to end (TRL too when installed): ~6 minutes on 2 cores."""
    subprocess.run([sys.executable, str(TOOLS / "bench.py"), "--quick", "--out", str(tmp_path)], check=True)
    text = (tmp_path / "results.md").read_text()
    assert text.count("| sft | tiny |") >= 2 and text.count("| grpo | tiny |") >= 2 and "## Scaling" in text
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == len(bench.main_table_specs(quick=True)) + 8
    assert (tmp_path / "bench.png").stat().st_size > 0 and (tmp_path / "scaling.png").stat().st_size > 0


def test_forward_comparison_runs_the_three_forwards_on_one_batch(monkeypatch, capsys):
    import bench_forward

    monkeypatch.setattr(sys, "argv", ["bench_forward.py", "aft", "--batch-size", "2", "--repeats", "2"])
    bench_forward.main()
    out = capsys.readouterr().out
    for method in ("cache", "packed"):
        difference = float(out.split(f"{method}: max |log-prob − flat| ")[1].split()[0])
        assert difference < 1e-5
    assert "forward + backward: flat" in out

"""Past one machine, simulated on one host: two processes, each its own "node"
(``trainer.num_nodes=2 trainer.devices=1``, gloo over loopback), started by the test with the
variables a launcher sets: Lightning's own (``NODE_RANK``, ``LOCAL_RANK``) or torchrun's
(``RANK``, ``GROUP_RANK``, ``TORCHELASTIC_RUN_ID``). Lightning only starts processes on its own
node, so each node is one command, as on a cluster.

Offline runs (SFT, DPO) equal the one-process run: the same global batch, split over ranks.
Online RL samples on each rank with a per-rank seed, so a one-process run samples other
completions; its oracle is the same world on one node (``trainer.devices=2``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import PARALLEL_RUN, losses_by_step

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTED = pytest.mark.distributed
BASE = PARALLEL_RUN  # the one-process run's settings (the `one_process` fixture)
RLOO = ["objective=rloo", "init=none", "rollout.num_prompts=4", "rollout.num_samples=4", "trainer.max_steps=2"]
EVERY_2 = ["callbacks.model_checkpoint.every_n_train_steps=2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_env(node: int, nodes: int, port: int, launcher: str) -> dict[str, str]:
    """The variables a launcher sets on node ``node`` for its one process (one device a node)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC_"))}
    env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(nodes), "LOCAL_RANK": "0"}
    if launcher == "lightning":  # `python -m lit_align` on each node: LightningEnvironment
        env["NODE_RANK"] = str(node)
    else:  # torchrun --nnodes: TorchElasticEnvironment
        env |= {"RANK": str(node), "GROUP_RANK": str(node), "LOCAL_WORLD_SIZE": "1", "TORCHELASTIC_RUN_ID": "t"}
    return env


def _run(run_dir: Path, *overrides: str) -> None:
    """The oracle: one command on one node (one process, or ``trainer.devices`` of them)."""
    args = [*BASE, f"hydra.run.dir={run_dir}", *overrides]
    out = subprocess.run([sys.executable, "-m", "lit_align", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]


def _two_nodes(run_dir: Path, strategy: str, *overrides: str, launcher: str = "lightning",
               returncodes: tuple[int, int] = (0, 0)) -> None:  # fmt: skip
    """Runs the two nodes' commands; when one fails, the other is ended, as torchrun and srun end
    the rest of a job. Each node's output goes to ``<run_dir>.node<n>.log``. ``returncodes``
    ``(None, None)``: not checked."""
    port = _free_port()
    args = [*BASE, f"strategy={strategy}", "trainer.devices=1", "trainer.num_nodes=2", f"hydra.run.dir={run_dir}",
            *overrides]  # fmt: skip
    logs = [run_dir.parent / f"{run_dir.name}.node{n}.log" for n in (0, 1)]
    procs = []
    for node, log in enumerate(logs):
        env = _node_env(node, 2, port, launcher)
        with log.open("a") as out:  # files, not pipes: a killed child must not block on a full pipe
            procs.append(subprocess.Popen([sys.executable, "-m", "lit_align", *args], cwd=ROOT, stdout=out,
                                          stderr=subprocess.STDOUT, env=env))  # fmt: skip
    deadline = time.monotonic() + 600
    try:
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            failed = [p.returncode for p in procs if p.poll() not in (None, 0)]
            if failed:  # one node stopped: the job is over once the other has had its chance
                # Killed: the other hangs in a collective. Exited (a signal's checkpoint): it stops too.
                end = time.monotonic() + (2 if failed[0] < 0 else 120)
                while any(p.poll() is None for p in procs) and time.monotonic() < end:
                    time.sleep(0.5)
                break
            time.sleep(0.5)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    codes = tuple(p.returncode for p in procs)
    if returncodes != (None, None):
        assert codes == returncodes, "\n".join(log.read_text()[-3000:] for log in logs)
    assert "MEMBER: 2/2" in logs[0].read_text() + logs[1].read_text()  # both nodes joined one world


def _same_run(one: Path, two: Path, steps: int = 4) -> None:
    """Equal losses at every step (rel 1e-5) and equal exported weights."""
    a, b = losses_by_step(one), losses_by_step(two)
    assert len(a) == steps and b == pytest.approx(a, rel=1e-5)
    weights_a, weights_b = load_file(one / "model/model.safetensors"), load_file(two / "model/model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    for name, tensor in weights_a.items():
        torch.testing.assert_close(weights_b[name], tensor, rtol=0, atol=1e-6)


@pytest.mark.parametrize("strategy", ["fsdp2", pytest.param("ddp", marks=DISTRIBUTED)])
def test_two_nodes_train_the_one_process_run(one_process, tmp_path, strategy):
    """SFT on two "nodes" (Lightning's environment: the rank comes from ``NODE_RANK``, which
    Lightning's own import-time guess ignores): the one-process run's losses and weights, one
    ``.hydra`` and one ``run.lock`` holder (rank 0 of node 0)."""
    _two_nodes(tmp_path / "run", strategy)
    _same_run(one_process, tmp_path / "run")
    assert not (tmp_path / "run/.hydra/resume-1").exists()  # node 1 wrote no config of its own


@DISTRIBUTED
@pytest.mark.parametrize("strategy,launcher", [("ddp", "torchrun"), ("fsdp2", "lightning")])
def test_dpo_on_two_nodes_is_the_one_process_run(tmp_path, strategy, launcher):
    dpo = ["objective=dpo", "init=none"]
    _run(tmp_path / "one", *dpo)
    _two_nodes(tmp_path / "two", strategy, *dpo, launcher=launcher)
    _same_run(tmp_path / "one", tmp_path / "two")


@DISTRIBUTED
def test_hybrid_sharding_on_two_nodes_is_the_one_process_run(one_process, tmp_path):
    """``hybrid=true``: the (replicate, shard) mesh, one shard per node here, replicated."""
    _two_nodes(tmp_path / "run", "fsdp2", "trainer.strategy.hybrid=true", launcher="torchrun")
    _same_run(one_process, tmp_path / "run")


@DISTRIBUTED
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_rloo_on_two_nodes_is_the_two_process_run(tmp_path, strategy):
    """Prompts are sharded over the global ranks and each rank samples with its own seed, so
    the oracle is the same world of two ranks on one node (``trainer.devices=2``), not one
    process."""
    _run(tmp_path / "one_node", *RLOO, f"strategy={strategy}", "trainer.devices=2")
    _two_nodes(tmp_path / "two_nodes", strategy, *RLOO)
    _same_run(tmp_path / "one_node", tmp_path / "two_nodes", steps=2)


@DISTRIBUTED
def test_a_node_killed_mid_run_resumes_on_both(one_process, tmp_path):
    """Node 1 dies after step 3 (SIGKILL; the launcher then ends node 0); both resume from the
    sharded step-2 checkpoint and retrace the one-process run."""
    kill = ["+callbacks.interrupt._target_=tests.interrupt.SignalAt", "+callbacks.interrupt.step=3",
            "+callbacks.interrupt.rank=1"]  # fmt: skip
    run = tmp_path / "run"
    _two_nodes(run, "fsdp2", *EVERY_2, *kill, returncodes=(None, None))
    assert (run / "checkpoints/last.ckpt").is_dir()  # per-rank shards, written by both nodes
    _two_nodes(run, "fsdp2", *EVERY_2, "ckpt_path=last")
    _same_run(one_process, run)


@DISTRIBUTED
def test_slurms_warning_signal_on_one_node_saves_and_the_requeued_job_resumes(one_process, tmp_path):
    """SIGUSR1 (``sbatch --signal=USR1@90``) reaching node 1 only after step 2: both nodes save
    ``last.ckpt`` at that step and exit 128 + 10, which tools/slurm.sbatch requeues on; the
    requeued job (``ckpt_path=last``) retraces the one-process run."""
    usr1 = ["+callbacks.interrupt._target_=tests.interrupt.SignalAt", "+callbacks.interrupt.step=2",
            "+callbacks.interrupt.signum=SIGUSR1", "+callbacks.interrupt.rank=1"]  # fmt: skip
    run = tmp_path / "run"
    _two_nodes(run, "ddp", *usr1, returncodes=(138, 138))
    assert (run / "checkpoints/last.ckpt").is_file()
    _two_nodes(run, "ddp", "ckpt_path=last")
    _same_run(one_process, run)


SLURM_NODE_1 = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1", "SLURM_PROCID": "1", "SLURM_LOCALID": "0",
                "SLURM_NODEID": "1", "SLURM_JOB_NAME": "lit_align", "SLURM_JOB_ID": "7",
                "SLURM_NODELIST": "node[0-1]"}  # fmt: skip


def test_slurm_is_detected_with_its_world_and_ranks(monkeypatch):
    """What ``srun`` sets for the second of two one-GPU tasks picks Lightning's SLURMEnvironment
    under `FSDP2Strategy`, with the world, node and rank `launch_rank` reads before it."""
    from lightning.fabric.plugins.environments import SLURMEnvironment
    from lightning.pytorch import Trainer
    from lightning.pytorch.utilities import rank_zero_only

    from lit_align.ranks import launch_rank
    from lit_align.strategy import FSDP2Strategy

    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in SLURM_NODE_1.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(rank_zero_only, "rank", rank_zero_only.rank)  # the trainer sets it: put it back
    assert SLURMEnvironment.detect()
    trainer = Trainer(accelerator="cpu", devices=1, num_nodes=2, strategy=FSDP2Strategy(), logger=False)
    env = trainer.strategy.cluster_environment
    assert isinstance(env, SLURMEnvironment)
    assert (env.world_size(), env.global_rank(), env.node_rank(), env.local_rank()) == (2, 1, 1, 0)
    assert launch_rank(devices=1) == 1 == trainer.global_rank


@pytest.mark.parametrize(
    "env,devices,rank",
    [
        ({}, 1, 0),
        ({"NODE_RANK": "1", "LOCAL_RANK": "1"}, 2, 3),  # Lightning's launcher: node-major
        ({"NODE_RANK": "1"}, 4, 4),  # node 1's first process, which Lightning would take for 0
        ({"RANK": "5", "LOCAL_RANK": "1", "GROUP_RANK": "2", "TORCHELASTIC_RUN_ID": "t"}, 2, 5),  # torchrun
        (SLURM_NODE_1, 1, 1),
    ],
)
def test_launch_rank_is_lightnings_global_rank(monkeypatch, env, devices, rank):
    from lit_align.ranks import launch_rank

    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "TORCHELASTIC_RUN_ID", *SLURM_NODE_1):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert launch_rank(devices) == rank

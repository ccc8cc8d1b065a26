"""This process's global rank, read from its launcher's variables before any trainer exists.

Lightning learns the rank when the trainer sets up its strategy, but a run takes its run
directory's lock, reads its checkpoint and prints before that, and Lightning's import-time
guess (``RANK``, else ``LOCAL_RANK``, …) is ``0`` on every node's first process when Lightning
launches the processes itself (``NODE_RANK`` set, no ``RANK``): on a shared filesystem, each
node would write as if it were rank 0.
"""

from __future__ import annotations

import os
from typing import Any

from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from lightning.pytorch.utilities import rank_zero_only


def launch_rank(devices: int = 1) -> int:
    """The global rank Lightning will give this process: ``RANK`` under torchrun, Slurm's
    ``SLURM_PROCID`` under ``srun``, else ``NODE_RANK × devices + LOCAL_RANK``, as Lightning's
    default environment counts (its own launcher, or processes started by hand; it ignores
    ``RANK``). ``devices`` is ``trainer.devices``, processes per node; it only matters past
    node 0."""
    # Lightning's order of detection: Slurm first, then torchrun.
    if SLURMEnvironment.detect():
        return int(os.environ["SLURM_PROCID"])
    if TorchElasticEnvironment.detect() and "RANK" in os.environ:
        return int(os.environ["RANK"])
    node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", 0)))
    return node * devices + int(os.environ.get("LOCAL_RANK", 0))


def set_launch_rank(devices: Any) -> int:
    """Sets Lightning's `rank_zero_only.rank` to `launch_rank` (what the trainer will set it to
    anyway), so that everything before the trainer — the run lock, printing — knows rank 0."""
    rank_zero_only.rank = launch_rank(devices if isinstance(devices, int) and devices > 0 else 1)
    return rank_zero_only.rank

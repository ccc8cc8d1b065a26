"""``python -m lit_align`` / ``lit-align``: Hydra composes the config and calls `train`."""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from lit_align.callbacks.preemption import Interrupted, StoppedOutside
from lit_align.checkpointing import WriteFailed
from lit_align.data.rows import BadRow, DataError
from lit_align.errors import ConfigError
from lit_align.resume import config_subdir
from lit_align.step import NonFiniteStop
from lit_align.train import train

# conf/ sits beside the package in a checkout and inside it in a wheel (see pyproject.toml).
_HERE = Path(__file__).resolve().parent
CONF_DIR = next((p for p in (_HERE / "conf", _HERE.parent / "conf") if p.is_dir()), _HERE.parent / "conf")
OmegaConf.register_new_resolver("lit_align_config_subdir", config_subdir, replace=True)  # hydra.output_subdir


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Runs `train`; returns ``optimized_metric`` (a key of the summary's final metrics) for a
    sweeper such as Optuna's, or None."""
    try:
        _check_shared_run_dir(cfg)
        summary = train(cfg)
    except (ConfigError, MissingMandatoryValue, BadRow, DataError) as error:  # BadRow names the file and row
        sys.exit(f"lit_align: {error}")
    except (NonFiniteStop, WriteFailed) as error:  # the run stopped; what it could keep is written
        sys.exit(f"lit_align: {error}")
    except FileNotFoundError as error:  # a data file or folder that is not there
        if not _raised_by_lit_align(error):
            raise
        sys.exit(f"lit_align: {error}")
    except Interrupted as stop:
        # A scheduler reads 128 + signum as "killed by that signal"; the checkpoint is written.
        print(f"lit_align: {stop}. Resume: the same command with hydra.run.dir={cfg.paths.output_dir} "
              "ckpt_path=last", file=sys.stderr)  # fmt: skip
        sys.exit(128 + stop.signum)
    except StoppedOutside as stop:  # a signal during an evaluation outside training
        print(f"lit_align: {stop}", file=sys.stderr)
        sys.exit(128 + stop.signum)
    except InstantiationException as error:
        # A loader's ConfigError, or one of our classes refusing an argument value: one line,
        # no traceback. A ValueError from a library keeps its traceback.
        cause = error.__cause__
        if isinstance(cause, ConfigError) or (isinstance(cause, ValueError) and _raised_by_lit_align(cause)):
            sys.exit(f"lit_align: {cause}")
        raise
    metric = cfg.get("optimized_metric")
    if metric is None:
        return None
    if metric not in summary["final"]:
        sys.exit(f"lit_align: optimized_metric={metric} is not a final metric of this run: {sorted(summary['final'])}")
    return summary["final"][metric]


def _check_shared_run_dir(cfg: DictConfig) -> None:
    """Under a launcher (torchrun, srun) or past one node, every process composes its own config,
    and the default run directory is a timestamp: each node (even each process) would write its
    own. (Lightning's own launcher passes its run directory to the processes it starts.)"""
    launched = int(os.environ.get("WORLD_SIZE", 1)) > 1 or int(os.environ.get("SLURM_NTASKS", 1)) > 1
    hydra = HydraConfig.get()
    if hydra.mode != RunMode.RUN or not (launched or cfg.trainer.get("num_nodes", 1) > 1):
        return
    if not any(override.startswith("hydra.run.dir=") for override in hydra.overrides.hydra):
        raise ConfigError(
            "several processes share this run: set hydra.run.dir to one folder, on a filesystem every node "
            "shares (the default is a timestamp, which differs between processes)"
        )


def _raised_by_lit_align(error: BaseException) -> bool:
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and Path(frames[-1].filename).resolve().is_relative_to(_HERE)


if __name__ == "__main__":
    main()

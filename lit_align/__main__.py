"""``python -m lit_align`` / ``lit-align``: Hydra composes the config and calls `train`."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from lit_align.config import ConfigError
from lit_align.train import train

# conf/ sits beside the package in a checkout and inside it in a wheel (see pyproject.toml).
_HERE = Path(__file__).resolve().parent
CONF_DIR = next((p for p in (_HERE / "conf", _HERE.parent / "conf") if p.is_dir()), _HERE.parent / "conf")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> None:
    try:
        train(cfg)
    except (ConfigError, MissingMandatoryValue) as error:
        sys.exit(f"lit_align: {error}")
    except InstantiationException as error:
        # A loader's ConfigError, or a class refusing an argument value: one line, no traceback.
        if isinstance(error.__cause__, ValueError):
            sys.exit(f"lit_align: {error.__cause__}")
        raise


if __name__ == "__main__":
    main()

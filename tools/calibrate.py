"""Runs the default SFT job over seeds and task knobs and prints held-out accuracy per setting.

This is how the built-in task's defaults were chosen: SFT should land clearly above chance and
clearly below perfect in about two minutes on a 2-core CPU, leaving later objectives room.

    python tools/calibrate.py                       # the defaults, seeds 0 1 2
    python tools/calibrate.py --seeds 0 --set data.steps=2 --set data.steps=3 trainer.max_steps=300

Each ``--set`` is one setting (space-separated overrides); runs go to ``runs/calibrate/``.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from hydra import compose, initialize_config_dir

from lit_align.__main__ import CONF_DIR
from lit_align.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="settings", action="append", nargs="*", default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/calibrate"))
    args = parser.parse_args()
    settings = args.settings or [[]]

    rows = []
    for overrides in settings:
        results = []
        for seed in args.seeds:
            out = args.out / ("_".join(overrides) or "defaults").replace("/", "-") / f"seed{seed}"
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                cfg = compose("train", overrides=[*overrides, f"seed={seed}", f"paths.output_dir={out}",
                                                  "trainer.enable_progress_bar=false"])  # fmt: skip
            results.append(train(cfg))
        test = [r["final"]["test/accuracy"] for r in results]
        wall = [r["wall_time_s"] for r in results]
        spread = statistics.stdev(test) if len(test) > 1 else 0.0
        rows.append((" ".join(overrides) or "(defaults)", statistics.mean(test), spread, test, statistics.mean(wall)))

    print("\n| setting | test/accuracy mean ± std | per seed | wall s |\n|---|---|---|---|")
    for name, mean, std, each, wall in rows:
        print(f"| {name} | {mean:.3f} ± {std:.3f} | {', '.join(f'{x:.3f}' for x in each)} | {wall:.0f} |")


if __name__ == "__main__":
    main()

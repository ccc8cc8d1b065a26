"""Every import inside lit_align points down the layers: a module imports only from its own layer
or those below it, so no module needs a lazy import to dodge a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lit_align"
# Bottom to top: what a layer may import is itself and what comes before it.
# data sits below objectives: its typed batches (data/batch.py) are what objectives read.
LAYERS = ["errors", "ranks", "strategy", "checkpointing", "schema", "data", "objectives", "rewards", "models",
          "rollout", "callbacks", "loggers", "runlock", "resume", "step", "evaluation", "module", "config", "pipeline",
          "train", "__main__"]  # fmt: skip


def _layer(module: str) -> int:
    return LAYERS.index(module.split(".")[1])


def test_every_import_points_down():
    upward, modules = [], set()
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        if module == "lit_align":
            continue
        modules.add(module.split(".")[1])
        for node in ast.walk(ast.parse(path.read_text())):
            imported = node.module or "" if isinstance(node, ast.ImportFrom) else ""
            if imported.startswith("lit_align.") and _layer(imported) > _layer(module):
                upward.append(f"{module} imports {imported}")
    assert modules == set(LAYERS)  # a new top-level module takes its place in LAYERS
    assert upward == []

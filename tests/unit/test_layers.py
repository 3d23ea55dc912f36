"""The layer contracts catch an import that runs upward.

`make lint` runs lint-imports on the tree; this shows that the contracts are
not vacuous: a copy of the package with one deliberate violation fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--config", "pyproject.toml"],
                          cwd=root, env=env, capture_output=True, text=True, check=False)


def _copy(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "offloadd", tmp_path / "offloadd",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_tree_keeps_its_layers(tmp_path: Path) -> None:
    proc = _lint(_copy(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def test_the_core_importing_the_service_layer_fails(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    model = root / "offloadd" / "core" / "model.py"
    model.write_text(model.read_text() + "\nfrom offloadd.service import status  # noqa\n")
    proc = _lint(root)
    assert proc.returncode != 0
    assert "offloadd.core.model -> offloadd.service.status" in proc.stdout


def test_a_kernel_library_in_the_core_fails(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    plan = root / "offloadd" / "core" / "plan.py"
    plan.write_text(plan.read_text() + "\nimport pyroute2  # noqa\n")
    proc = _lint(root)
    assert proc.returncode != 0
    assert "offloadd.core.plan -> pyroute2" in proc.stdout

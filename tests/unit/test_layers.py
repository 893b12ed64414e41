"""The floors of ``bls_pipeline`` point down: the import-linter contracts of ``pyproject.toml``
hold on the package, and an upward import breaks them (checked on a copy with one added)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(package_parent: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` with the project's contracts, on the ``bls_pipeline`` in ``package_parent``."""
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=package_parent, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_the_package_keeps_its_contracts():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_upward_import_breaks_the_floors(tmp_path):
    shutil.copytree(ROOT / "bls_pipeline", tmp_path / "bls_pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    padding = tmp_path / "bls_pipeline" / "request" / "padding.py"
    padding.write_text(padding.read_text() + "\nfrom bls_pipeline.builder import model_config  # upward\n")

    result = lint_imports(tmp_path)

    assert result.returncode != 0
    assert "bls_pipeline floors point down BROKEN" in result.stdout
    assert "bls_pipeline.request.padding -> bls_pipeline.builder.model_config" in result.stdout

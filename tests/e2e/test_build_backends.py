"""``tools/build_backends.py`` as a user runs it: a cached build is quick, and what is missing
is named in one line (the build itself ran before the tests: Makefile's ``backends`` target)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bls_pipeline.backends import build, sources
from tests.conftest import require_native_backends

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_build(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "tools/build_backends.py", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_second_run_reuses_the_cached_build_in_seconds():
    require_native_backends()
    started = time.monotonic()

    result = run_build()

    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 30
    assert "cached build" in result.stdout
    assert result.stdout.splitlines()[-3].startswith("cached: pytriton")


def test_a_sources_folder_without_the_archives_fails_in_one_line_naming_the_archive(tmp_path):
    empty = tmp_path / "sources"
    empty.mkdir()

    result = run_build("--sources", str(empty), "--cache-dir", str(tmp_path / "cache"))

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert (
        result.stderr.strip() == f"build_backends: error: missing archive {sources.SOURCES[0].archive_name} in {empty}"
    )


@pytest.mark.skipif(not build.DEFAULT_SOURCES.is_dir(), reason="no shared source archives")
def test_a_machine_without_a_compiler_is_told_which_to_install(tmp_path):
    # No PATH at all: no c++, g++ or clang++ (the interpreter is called by its full path).
    result = run_build("--cache-dir", str(tmp_path / "cache"), env={"PATH": str(tmp_path), "CXX": ""})

    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("build_backends: error: no C++ compiler found")
    assert "install g++" in result.stderr

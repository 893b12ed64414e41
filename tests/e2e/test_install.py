"""A non-editable install works: the wheel's ``bls-build-repo`` and ``bls-serve`` build and
serve a repository that classifies a photograph, and ``bls-build-repo --dali-pipeline``
converts the tutorial's pipeline and verifies it on the photographs the package ships.

The wheel is built from a copy of the project's sources and installed without dependencies
into a fresh virtual environment; the dependencies come from the environment running the
tests through a ``.pth`` line written after the install (so pip never sees them, and nothing
is downloaded). The tools run outside the checkout without ``PYTHONPATH``, and a probe
planted in the installed copy of ``classifier/1/model.py`` shows that the built repository
came from the installed package and that the served model imported the installed
``bls_pipeline``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from bls_pipeline.client import ClassifierClient
from bls_pipeline.server.launcher import free_port
from tests.conftest import PHOTOS, TUTORIAL_ARGS, TUTORIAL_SCRIPT

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
PROJECT_FILES = ("setup.py", "setup.cfg", "pyproject.toml", "README.md", "MANIFEST.in")
PROJECT_FOLDERS = ("bls_pipeline", "tools", "model_repository", "samples")
PROBE = """
# Test probe: record which bls_pipeline this model imported.
import os as _os, bls_pipeline as _bls
with open(_os.environ["BLS_INSTALL_PROBE"], "a") as _probe:
    _probe.write(_bls.__file__ + "\\n")
"""


def run(command: list[str], env: dict[str, str], cwd: Path, timeout: float = 600) -> str:
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"{command[0]} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def build_wheel(tmp_path: Path, env: dict[str, str]) -> Path:
    """A wheel built from a copy of the sources, so the checkout gets no build outputs."""
    source = tmp_path / "source"
    source.mkdir()
    for name in PROJECT_FILES:
        shutil.copy(REPO_ROOT / name, source / name)
    for name in PROJECT_FOLDERS:
        shutil.copytree(
            REPO_ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.onnx", "*.plan")
        )
    wheels = tmp_path / "wheels"
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
        env,
        tmp_path,
    )
    (wheel,) = wheels.glob("bls_pipeline-*.whl")
    return wheel


def fresh_venv(tmp_path: Path, wheel: Path, env: dict[str, str]) -> tuple[Path, Path]:
    """A new venv with only the wheel installed, then the test environment's packages visible."""
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], env, tmp_path)
    python = venv / "bin" / "python"
    run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
        env,
        tmp_path,
    )
    site = Path(
        run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env, tmp_path).strip()
    )
    # A plain path line: the directory joins sys.path after the venv's own site-packages, and
    # its .pth files (the checkout's editable install among them) are not run.
    (site / "zz_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv, site


def wait_until_ready(process: subprocess.Popen[str], deadline_s: float) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("ready: "):
            return lines
    raise AssertionError(f"bls-serve did not get ready (exit {process.poll()}):\n{''.join(lines)}")


def test_a_wheel_installed_in_a_fresh_venv_builds_and_serves_the_repository(tmp_path):
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["BLS_INSTALL_PROBE"] = str(tmp_path / "probe.txt")
    work = tmp_path / "work"  # outside the checkout: nothing there to import by accident
    work.mkdir()

    venv, site = fresh_venv(tmp_path, build_wheel(tmp_path, env), env)
    installed = site / "bls_pipeline"
    imported = run([str(venv / "bin" / "python"), "-c", "import bls_pipeline; print(bls_pipeline.__file__)"], env, work)
    assert Path(imported.strip()).is_relative_to(installed)
    template = installed / "model_repository" / "classifier" / "1" / "model.py"
    template.write_text(template.read_text() + PROBE)

    repository = work / "repository"
    run([str(venv / "bin" / "bls-build-repo"), "--output", str(repository)], env, work)
    assert PROBE in (repository / "classifier" / "1" / "model.py").read_text()
    assert (repository / "preprocessing" / "1" / "dali.py").read_bytes() == (
        REPO_ROOT / "model_repository" / "preprocessing" / "1" / "dali.py"
    ).read_bytes()

    port = free_port()
    command = [
        str(venv / "bin" / "bls-serve"),
        "--model-repository",
        str(repository),
        "--http-port",
        str(port),
        "--grpc-port",
        "0",
        "--metrics-port",
        "0",
        "--log-file",
        str(tmp_path / "tritonserver.log"),
    ]
    with subprocess.Popen(
        command, env=env, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as server:
        try:
            wait_until_ready(server, deadline_s=300)
            with ClassifierClient(f"127.0.0.1:{port}", protocol="http") as client:
                (prediction,) = client.classify([(REPO_ROOT / "samples" / "chelsea.jpg").read_bytes()], top_k=1)
        finally:
            server.terminate()
            output, _ = server.communicate(timeout=120)
    assert server.returncode == 0, output
    assert prediction.class_ids == [PHOTOS["chelsea"]]
    # The classifier's stub imported the installed package, not the checkout.
    (stub_import,) = set((tmp_path / "probe.txt").read_text().split())
    assert Path(stub_import).is_relative_to(installed)

    # The verification photographs ship with the package: a --dali-pipeline build verifies there.
    samples = sorted(path.name for path in (REPO_ROOT / "samples").iterdir())
    assert sorted(path.name for path in (installed / "samples").iterdir()) == samples
    converted = work / "converted"
    arguments = [f"--pipeline-arg={argument}" for argument in TUTORIAL_ARGS]
    printed = run(
        [str(venv / "bin" / "bls-build-repo"), "--dali-pipeline", f"{TUTORIAL_SCRIPT}:validation_pipe", *arguments,
         "--device", "cpu", "--max-batch-size", "4", "--output", str(converted)],
        env, work,
    )  # fmt: skip
    assert f"verified on {len(samples)} sample photographs: output float32 [3, 224, 224]" in printed
    assert (converted / "preprocessing" / "1" / "model.dali").is_file()
    assert (converted / "bls_build.json").is_file()

"""Staging a server's files: the backend directory and the environment the stub runs in.

The ``nvidia-pytriton`` wheel ships the server, its Python backend and Python-backend stubs
for several Pythons. A server gets a backend directory of its own with the stub of the running
Python, and Triton's own DALI and ONNX Runtime backends (built by ``tools/build_backends.py``)
when a model needs them; ``LD_LIBRARY_PATH`` and ``PATH`` are set so that the stub embeds this
environment's Python (and the DALI backend autoserializes with it).

Example::

    root = pytriton_root()
    backends = stage_backends(root, workdir, find_native_backends(repository, None))
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from bls_pipeline.backends import BACKENDS, native_backends_dir
from bls_pipeline.builder.model_config import read_config
from bls_pipeline.errors import ConfigError, ServerError
from bls_pipeline.server.allocator import with_allocator_defaults

# The platforms that Triton's own backends (tools/build_backends.py) serve.
NATIVE_PLATFORMS = {"onnxruntime_onnx": "onnxruntime"}


def pytriton_root() -> Path:
    """The ``tritonserver`` folder of the installed ``nvidia-pytriton`` wheel."""
    # find_spec, not import: importing pytriton pulls in its whole client stack.
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("nvidia-pytriton is not installed: pip install nvidia-pytriton")
    root = Path(list(spec.submodule_search_locations)[0]).resolve() / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise ServerError(f"no tritonserver binary in {root}: reinstall nvidia-pytriton")
    return root


def native_backend_models(repository: Path) -> dict[str, str]:
    """The models of ``repository`` that run on Triton's DALI or ONNX Runtime backend, with it."""
    found = {}
    for path in sorted(repository.glob("*/config.pbtxt")):
        try:
            config = read_config(path)
        except ConfigError:
            continue  # tritonserver refuses it at start, naming the model, as for any model
        backend = config.backend or NATIVE_PLATFORMS.get(config.platform, "")
        if backend in BACKENDS:
            found[config.name or path.parent.name] = backend
    return found


def find_native_backends(repository: Path, given: Path | None) -> Path | None:
    """The native backends to stage: ``given``, or built here when the repository needs them."""
    needs = native_backend_models(repository)
    if given is not None:
        return Path(given)
    if not needs:
        return None
    found = native_backends_dir()
    if found is None:
        raise ServerError(
            f"{', '.join(f'{model} ({backend})' for model, backend in sorted(needs.items()))} need Triton's own "
            "backends, which are not built for this environment: python tools/build_backends.py"
        )
    return found


def server_environment(root: Path) -> dict[str, str]:
    """The environment of the ``tritonserver`` under ``root``: its libraries, this Python first
    on PATH, and the allocator's defaults (:mod:`~bls_pipeline.server.allocator`)."""
    env = with_allocator_defaults(os.environ)
    libs = [str(root.parent.parent / "nvidia_pytriton.libs"), str(sysconfig.get_config_var("LIBDIR"))]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libs + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p])
    # The stub embeds libpython, which finds its prefix (and so this virtual
    # environment's site-packages) through the first python3 on PATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def stub_numpy_version(env: dict[str, str]) -> str:
    """The numpy version that the Python-backend stub will import with ``env``."""
    result = subprocess.run(
        [sys.executable, "-c", "import numpy; print(numpy.__version__)"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        # The traceback's last line is the reason ("ModuleNotFoundError: No module named 'numpy'").
        reason = (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1]
        raise ServerError(f"numpy cannot be imported by {sys.executable}: {reason}")
    return result.stdout.strip()


def check_stub_numpy(env: dict[str, str]) -> None:
    """Refuse a numpy the stub cannot use: with numpy 2 every tensor arrives empty."""
    numpy_version = stub_numpy_version(env)
    if int(numpy_version.split(".")[0]) >= 2:
        raise ServerError(
            f"the Python-backend stub would import numpy {numpy_version}; it needs numpy < 2 "
            "(with numpy 2 every tensor arrives empty): pip install 'numpy<2'"
        )


def stage_backends(root: Path, workdir: Path, native_backends: Path | None) -> Path:
    """``workdir/backends``: the wheel's backends with this Python's stub, and the native ones linked in."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(f"nvidia-pytriton has no Python-backend stub for Python {version}")
    backends = workdir / "backends"
    shutil.copytree(root / "backends", backends, symlinks=True)
    shutil.copy2(stub, backends / "python" / stub.name)
    if native_backends is not None:
        # Links, not copies: their RUNPATHs name this environment's DALI and ONNX Runtime.
        for name in BACKENDS:
            # A copy that `build_backends.py --install` put into pytriton's own folder has
            # $ORIGIN-relative RUNPATHs, which do not resolve from this staged folder.
            shutil.rmtree(backends / name, ignore_errors=True)
            (backends / name).symlink_to(native_backends / name, target_is_directory=True)
    return backends

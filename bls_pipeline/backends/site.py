"""Where the installed server, DALI and ONNX Runtime live, and how a built backend is
retargeted to them with patchelf.

pytriton's wheel renames the server's libraries (``libtritonserver-<hash>.so``,
``libcudart-<hash>.so.12.6.77`` in ``nvidia_pytriton.libs``); a backend built against the
plain names gets its ``NEEDED`` entries replaced, and a ``RUNPATH`` to the DALI or ONNX
Runtime wheel and to ``nvidia_pytriton.libs``: absolute for this environment, or relative
(``$ORIGIN/../../../..``) for a copy placed in ``<site>/pytriton/tritonserver/backends/``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bls_pipeline.errors import BackendBuildError

# pip distributions a build is tied to (the DALI backend compiles against DALI's internal headers).
DISTRIBUTIONS = {"pytriton": "nvidia-pytriton", "dali": "nvidia-dali-cuda120", "onnxruntime": "onnxruntime"}
# From backends/<name>/ up to the site folder that holds pytriton/, nvidia/ and onnxruntime/.
RELATIVE_SITE = "$ORIGIN/../../../.."


@dataclass(frozen=True)
class Site:
    """The installed packages a backend runs against."""

    pytriton_libs: Path  # nvidia_pytriton.libs
    dali: Path  # nvidia/dali
    onnxruntime: Path  # onnxruntime/capi
    backends: Path  # pytriton/tritonserver/backends

    def library_dir(self, backend: str) -> Path:
        """The wheel folder whose libraries ``backend`` loads."""
        return self.dali if backend == "dali" else self.onnxruntime

    def runpath(self, backend: str, relative: bool) -> str:
        """The RUNPATH of an installed backend."""
        folders = [self.library_dir(backend), self.pytriton_libs]
        if relative:
            root = self.backends.parent.parent.parent
            return ":".join(f"{RELATIVE_SITE}/{folder.relative_to(root)}" for folder in folders)
        return ":".join(str(folder) for folder in folders)


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        distribution = DISTRIBUTIONS.get(name.split(".")[-1], name)
        raise BackendBuildError(f"{name} is not installed: pip install {distribution}")
    return Path(list(spec.submodule_search_locations)[0]).resolve()


def installed_site() -> Site:
    """The packages of the running environment."""
    pytriton = _package_dir("pytriton")
    return Site(
        pytriton_libs=pytriton.parent / "nvidia_pytriton.libs",
        dali=_package_dir("nvidia.dali"),
        onnxruntime=_package_dir("onnxruntime") / "capi",
        backends=pytriton / "tritonserver" / "backends",
    )


def installed_versions() -> dict[str, str]:
    """The installed version of each distribution a build is tied to."""
    versions = {}
    for key, distribution in DISTRIBUTIONS.items():
        try:
            versions[key] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            raise BackendBuildError(f"{distribution} is not installed: pip install {distribution}") from None
    return versions


def one_library(folder: Path, pattern: str) -> str:
    """The file name of the single library in ``folder`` that matches ``pattern``."""
    found = sorted(path.name for path in folder.glob(pattern))
    if len(found) != 1:
        raise BackendBuildError(f"expected one {pattern} in {folder}, found {found or 'none'}")
    return found[0]


def needed_replacements(site: Site, ort_library: str | None = None) -> dict[str, str]:
    """Plain library names the build links against -> the names installed in ``site``."""
    return {
        "libtritonserver.so": one_library(site.pytriton_libs, "libtritonserver-*.so"),
        "libcudart.so.12": one_library(site.pytriton_libs, "libcudart-*.so.12*"),
        "libonnxruntime.so.1": ort_library or one_library(site.onnxruntime, "libonnxruntime.so.1.*"),
    }


def _patchelf(patchelf: Path, *args: str) -> str:
    result = subprocess.run([str(patchelf), *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BackendBuildError(f"patchelf {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def retarget(
    library: Path, backend: str, site: Site, patchelf: Path, relative: bool, ort_library: str | None = None
) -> None:
    """Point ``library``'s NEEDED entries and RUNPATH at ``site`` (one change per patchelf call)."""
    needed = _patchelf(patchelf, "--print-needed", str(library)).split()
    for old, new in needed_replacements(site, ort_library).items():
        if old in needed:
            _patchelf(patchelf, "--replace-needed", old, new, str(library))
    _patchelf(patchelf, "--set-rpath", site.runpath(backend, relative), str(library))


def install_copy(library: Path, dest_dir: Path) -> Path:
    """Copy ``library`` into ``dest_dir`` (atomically: a server may be loading the old one)."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / library.name
    partial = dest_dir / f".{library.name}.partial"
    shutil.copy2(library, partial)
    os.replace(partial, dest)
    return dest

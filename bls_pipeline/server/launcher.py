"""Run the ``tritonserver`` binary of the ``nvidia-pytriton`` wheel as a local server.

The wheel ships the server, its Python backend and Python-backend stubs for several Pythons.
:class:`LocalTritonServer` stages a backend directory with the stub of the running Python,
adds Triton's own DALI and ONNX Runtime backends when a model needs them (built by
``tools/build_backends.py``), sets ``LD_LIBRARY_PATH`` and ``PATH`` so the stub embeds this
environment's Python (and the DALI backend autoserializes with it), binds
127.0.0.1, waits for readiness with a deadline, and on stop leaves no process and no
``/dev/shm`` segment behind.

tritonserver 2.51 does not restart a Python-backend stub that died (killed, out of memory):
the model still reports ready and every request to it fails after a second with "Stub
process '<model>_0_0' is not healthy." A watchdog thread therefore runs the server in explicit
model-control mode and reloads (unload, then load) every model whose stub is gone; the
endpoint recovers in about two seconds without a server restart.

The admin APIs (shared memory, trace, logging, model repository) answer only requests with
the admin key header (:mod:`bls_pipeline.server.admin`): the key of ``ServerOptions.admin_key``,
else ``BLS_ADMIN_KEY_FILE`` / ``BLS_ADMIN_KEY``, else a random per-server key that only the
watchdog has.

Example::

    with LocalTritonServer(ServerOptions(model_repository=Path("build/model_repository"))) as server:
        print(server.url)          # http://127.0.0.1:8000
        print(server.grpc_url)     # grpc://127.0.0.1:8001
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bls_pipeline.backends import BACKENDS, native_backends_dir
from bls_pipeline.builder.model_config import CLASSIFIER, read_config
from bls_pipeline.errors import ConfigError, ServerError
from bls_pipeline.server.admin import ADMIN_HEADER, AdminKeyError, admin_key, check_key, restriction_args
from bls_pipeline.server.processes import (
    SHM_DIR,
    StubProcess,
    cpu_seconds,
    models_with_dead_stubs,
    shm_segments,
    stub_processes,
)
from bls_pipeline.server.sizing import ServerSizing

LOGGER = logging.getLogger(__name__)

LOG_TAIL_LINES = 25
# The platforms that Triton's own backends (tools/build_backends.py) serve.
NATIVE_PLATFORMS = {"onnxruntime_onnx": "onnxruntime"}
# glog error lines ("E1125 08:52:25.111826 ...") and the server's last words ("error: creating server: ...").
_LOG_ERROR = re.compile(r"E\d{4} |error: |\[libprotobuf ERROR")


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


@dataclass
class ServerOptions:
    """How to start the server; every port 0 means "pick a free one"."""

    model_repository: Path
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    startup_timeout_s: float = 300.0
    log_path: Path | None = None
    log_verbose: int = 0
    # How long tritonserver waits for in-flight requests on SIGTERM (its default is 30 s).
    exit_timeout_s: int = 10
    # The Python backend's shared memory per stub and the CUDA memory pool per GPU; None:
    # sized from the repository's configs (server.sizing), since Triton's defaults fail
    # under load (a DALI batch of 64 images is 38 MB; the CUDA pool is 64 MB).
    shm_default_byte_size: int | None = None
    shm_growth_byte_size: int | None = None
    cuda_memory_pool_byte_size: int | None = None
    # Reload a model whose stub died (see the module docstring); needs explicit model control.
    restart_dead_stubs: bool = True
    watchdog_interval_s: float = 1.0
    # Triton's own DALI and ONNX Runtime backends (a folder with dali/ and onnxruntime/);
    # None: the ones tools/build_backends.py built for this environment, staged only when a
    # model of the repository needs them.
    native_backends: Path | None = None
    # The key of the closed admin APIs (server.admin); None: from the environment, else random.
    admin_key: str | None = None
    extra_args: list[str] = field(default_factory=list)


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


def describe_hosting(server: LocalTritonServer) -> str:
    """One line for the start of a tool: which backends serve the repository's models."""
    native = native_backend_models(Path(server.options.model_repository))
    if native:
        models = ", ".join(f"{model} on {backend}" for model, backend in sorted(native.items()))
        return f"Triton's own backends: {models} (from {server.native_backends}); the rest on the Python backend"
    return "Python backend for every model (DALI and the network in Python-backend models)"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


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


class LocalTritonServer:
    """A ``tritonserver`` child process with its own staged backend directory."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._log_file = None
        self._shm_before: set[str] = set()
        self._stub_segments: set[str] = set()
        self._watchdog: threading.Thread | None = None
        self._watchdog_stop = threading.Event()
        self.log_path: Path | None = None
        # The folder of Triton's DALI and ONNX Runtime backends this server stages (start()).
        self.native_backends: Path | None = None
        # Models the watchdog reloaded because their stub died, in order.
        self.reloaded_models: list[str] = []
        try:
            self._admin_key, self.admin_key_source = (
                (check_key(options.admin_key, "ServerOptions.admin_key"), "given") if options.admin_key else admin_key()
            )
        except AdminKeyError as exc:
            raise ServerError(str(exc)) from None
        # What start() sized the memory pools for (None: not a repository of this project).
        self.sizing: ServerSizing | None = None

    @property
    def url(self) -> str:
        """The HTTP endpoint, ``http://host:port``."""
        return f"http://{self.options.host}:{self.options.http_port}"

    @property
    def grpc_url(self) -> str:
        """The gRPC endpoint, ``grpc://host:port`` (the scheme tells a client its protocol)."""
        return f"grpc://{self.options.host}:{self.options.grpc_port}"

    def __enter__(self) -> LocalTritonServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _environment(self, root: Path) -> dict[str, str]:
        env = dict(os.environ)
        libs = [str(root.parent.parent / "nvidia_pytriton.libs"), str(sysconfig.get_config_var("LIBDIR"))]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            libs + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
        )
        # The stub embeds libpython, which finds its prefix (and so this virtual
        # environment's site-packages) through the first python3 on PATH.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env

    def _stage_backends(self, root: Path, workdir: Path) -> Path:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.is_file():
            raise ServerError(f"nvidia-pytriton has no Python-backend stub for Python {version}")
        backends = workdir / "backends"
        shutil.copytree(root / "backends", backends, symlinks=True)
        shutil.copy2(stub, backends / "python" / stub.name)
        if self.native_backends is not None:
            # Links, not copies: their RUNPATHs name this environment's DALI and ONNX Runtime.
            for name in BACKENDS:
                # A copy that `build_backends.py --install` put into pytriton's own folder has
                # $ORIGIN-relative RUNPATHs, which do not resolve from this staged folder.
                shutil.rmtree(backends / name, ignore_errors=True)
                (backends / name).symlink_to(self.native_backends / name, target_is_directory=True)
        return backends

    def _find_native_backends(self) -> Path | None:
        """The native backends to stage: given, or built here when the repository needs them."""
        needs = native_backend_models(Path(self.options.model_repository))
        if self.options.native_backends is not None:
            return Path(self.options.native_backends)
        if not needs:
            return None
        found = native_backends_dir()
        if found is None:
            raise ServerError(
                f"{', '.join(f'{model} ({backend})' for model, backend in sorted(needs.items()))} need Triton's own "
                "backends, which are not built for this environment: python tools/build_backends.py"
            )
        return found

    def command(self, backends: Path, binary: Path) -> list[str]:
        """The ``tritonserver`` command line."""
        o = self.options
        return [
            str(binary),
            f"--model-repository={Path(o.model_repository).resolve()}",
            f"--backend-directory={backends}",
            f"--http-address={o.host}",
            f"--http-port={o.http_port}",
            f"--grpc-address={o.host}",
            f"--grpc-port={o.grpc_port}",
            f"--metrics-address={o.host}",
            f"--metrics-port={o.metrics_port}",
            "--allow-metrics=true",
            "--exit-on-error=true",
            "--strict-readiness=true",
            f"--exit-timeout-secs={o.exit_timeout_s}",
            f"--log-verbose={o.log_verbose}",
            *self.memory_args(),
            *(["--model-control-mode=explicit", "--load-model=*"] if o.restart_dead_stubs else []),
            *restriction_args(self._admin_key),
            *o.extra_args,
        ]

    def memory_args(self) -> list[str]:
        """Shared-memory and CUDA-pool flags: the options where given, else sized from the repository."""
        o = self.options
        sizing = self.sizing or ServerSizing.defaults()
        sizing = dataclasses.replace(
            sizing,
            shm_default_bytes=o.shm_default_byte_size or sizing.shm_default_bytes,
            shm_growth_bytes=o.shm_growth_byte_size or sizing.shm_growth_bytes,
            cuda_pool_bytes=o.cuda_memory_pool_byte_size or sizing.cuda_pool_bytes,
        )
        return sizing.server_args()

    def start(self) -> None:
        """Start the server and wait until it is ready; raises :class:`ServerError` otherwise."""
        o = self.options
        if not Path(o.model_repository).is_dir():
            raise ServerError(
                f"model repository {o.model_repository} does not exist: build it with tools/build_repo.py"
            )
        for name in ("http_port", "grpc_port", "metrics_port"):
            if getattr(o, name) == 0:
                setattr(o, name, free_port(o.host))
        root = pytriton_root()
        env = self._environment(root)
        numpy_version = stub_numpy_version(env)
        if int(numpy_version.split(".")[0]) >= 2:
            raise ServerError(
                f"the Python-backend stub would import numpy {numpy_version}; it needs numpy < 2 "
                "(with numpy 2 every tensor arrives empty): pip install 'numpy<2'"
            )
        self.sizing = ServerSizing.from_repository(Path(o.model_repository))
        LOGGER.info(
            "memory: %s", self.sizing.describe() if self.sizing else "Triton's defaults (no classifier repository)"
        )
        self.native_backends = self._find_native_backends()
        self._workdir = Path(tempfile.mkdtemp(prefix="bls-triton-"))
        backends = self._stage_backends(root, self._workdir)
        self.log_path = Path(o.log_path) if o.log_path else self._workdir / "tritonserver.log"
        self._log_file = open(self.log_path, "ab")
        self._shm_before = shm_segments()
        command = self.command(backends, root / "bin" / "tritonserver")
        LOGGER.info("starting %s", " ".join(command).replace(self._admin_key, "***"))
        self.process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            # Its own process group, so that stop() can reach every stub process.
            start_new_session=True,
        )
        try:
            self.wait_ready(o.startup_timeout_s)
        except BaseException:
            self.stop()
            raise
        if o.restart_dead_stubs:
            self._watchdog_stop.clear()
            self._watchdog = threading.Thread(target=self._watch_stubs, name="stub-watchdog", daemon=True)
            self._watchdog.start()

    def stubs(self) -> list[StubProcess]:
        """The server's live Python-backend stubs; remembers their shared-memory segments."""
        if self.process is None:
            return []
        found = stub_processes(self.process.pid)
        self._stub_segments.update(stub.shm_region for stub in found)
        return found

    def cpu_seconds(self) -> float:
        """CPU time of the server and of every live stub so far (seconds), from ``/proc``."""
        if self.process is None:
            return 0.0
        return cpu_seconds(self.process.pid) + sum(cpu_seconds(stub.pid) for stub in self.stubs())

    def _repository_call(self, path: str, what: str, timeout_s: float) -> bytes:
        """POST to the (closed) model-repository API with the admin key; the answer's body."""
        request = urllib.request.Request(
            f"{self.url}/v2/repository/{path}", data=b"", method="POST", headers={ADMIN_HEADER: self._admin_key}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise ServerError(f"cannot {what}: HTTP {exc.code} {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise ServerError(f"cannot {what}: {exc}") from None

    def reload_model(self, model: str, timeout_s: float = 120.0) -> None:
        """Unload and load ``model`` (explicit model control): a fresh stub, same files."""
        for action in ("unload", "load"):
            self._repository_call(f"models/{model}/{action}", f"{action} model {model!r}", timeout_s)

    def drain(self, timeout_s: float) -> bool:
        """Stop taking requests and let the ones taken finish; whether they did within ``timeout_s``.

        tritonserver's own SIGTERM handling refuses every new inference at once, the BLS calls
        of requests it already took included, so those fail ("Server not ready"). Unloading the
        classifier first (explicit model control) turns readiness false and refuses new
        requests while its sub-models still answer the requests it holds; Triton finishes
        the model's in-flight requests before it unloads it. Once it is unloaded, the server
        with the sub-models alone reports ready again until the SIGTERM that follows at once
        (measured: ~20 ms; nothing routes to it then, as the classifier is gone).
        """
        if not self.options.restart_dead_stubs or self.process is None or self.process.poll() is not None:
            return False
        if not self.is_ready():
            return False  # not serving (a failed start, a dead server): nothing to drain
        deadline = time.monotonic() + timeout_s
        try:
            self._repository_call(f"models/{CLASSIFIER}/unload", f"unload {CLASSIFIER!r}", timeout_s)
            while time.monotonic() < deadline:
                index = json.loads(self._repository_call("index", "read the repository index", timeout_s))
                states = {entry.get("name"): entry.get("state") for entry in index}
                if states.get(CLASSIFIER) != "UNLOADING" and states.get(CLASSIFIER) != "READY":
                    return True
                time.sleep(0.01)
        except (ServerError, ValueError) as exc:
            LOGGER.warning("draining %r: %s", CLASSIFIER, exc)
        return False

    def _watch_stubs(self) -> None:
        known = self.stubs()
        while not self._watchdog_stop.wait(self.options.watchdog_interval_s):
            if self.process is None or self.process.poll() is not None:
                return
            for model in sorted(models_with_dead_stubs(known, self.stubs())):
                LOGGER.warning("the stub process of model %r died: reloading the model", model)
                try:
                    self.reload_model(model)
                except ServerError as exc:
                    LOGGER.error("%s; log %s", exc, self.log_path)
                    continue
                self.reloaded_models.append(model)
                LOGGER.warning("model %r reloaded", model)
            known = self.stubs()

    def wait_ready(self, timeout_s: float) -> None:
        """Poll ``/v2/health/ready`` until it answers 200, the process dies or time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise ServerError(
                    f"tritonserver exited with code {code} while starting; errors:\n{self.log_errors()}\n"
                    f"log {self.log_path} ends:\n{self.log_tail()}"
                )
            if self.is_ready():
                LOGGER.info("tritonserver ready at %s (pid %d, log %s)", self.url, self.process.pid, self.log_path)
                return
            time.sleep(0.25)
        raise ServerError(
            f"tritonserver (pid {self.process.pid if self.process else '?'}) not ready after {timeout_s:.0f} s; "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

    def is_ready(self) -> bool:
        """Whether the server answers ready now."""
        try:
            with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log_errors(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` error lines of the server log.

        The reason a model failed to load is logged early; the tail is then tables of options.
        """
        if self.log_path is None or not self.log_path.is_file():
            return "(no log)"
        errors = [line for line in self.log_path.read_text(errors="replace").splitlines() if _LOG_ERROR.match(line)]
        return "\n".join(errors[-lines:]) or "(none logged)"

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the server log."""
        if self.log_path is None or not self.log_path.is_file():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Stop the server and its stubs (SIGTERM, then SIGKILL) and remove their segments."""
        self._watchdog_stop.set()
        if self._watchdog is not None and self._watchdog is not threading.current_thread():
            self._watchdog.join(timeout=30)
        self._watchdog = None
        self.stubs()
        if self.drain(self.options.exit_timeout_s):
            LOGGER.info("%s drained: its requests finished", CLASSIFIER)
        process, self.process = self.process, None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                grace_s = self.options.exit_timeout_s + 10
                try:
                    process.wait(grace_s)
                except subprocess.TimeoutExpired:
                    LOGGER.warning("tritonserver did not stop in %d s: killing it", grace_s)
            _kill_group(process.pid)
            process.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        # Only this server's segments: other servers on the machine create theirs meanwhile.
        ours = self._stub_segments or (shm_segments() - self._shm_before)
        for name in ours:
            (SHM_DIR / name).unlink(missing_ok=True)
        self._stub_segments = set()
        if self._workdir is not None:
            # The log stays readable when it was written inside the work directory.
            shutil.rmtree(self._workdir / "backends", ignore_errors=True)


def _kill_group(pgid: int) -> None:
    """SIGKILL whatever is left of the server's process group (stubs that outlived it)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass

"""Run the ``tritonserver`` binary of the ``nvidia-pytriton`` wheel as a local server.

:class:`LocalTritonServer` puts the rooms of :mod:`bls_pipeline.server` together: it stages a
backend directory and the stub's environment (:mod:`~bls_pipeline.server.staging`), sizes the
memory pools (:mod:`~bls_pipeline.server.sizing`), binds 127.0.0.1, waits for readiness with a
deadline, drains and stops the process (:mod:`~bls_pipeline.server.lifecycle`), reloads the
models whose stub died (:mod:`~bls_pipeline.server.watchdog`, which needs explicit model
control), reads its log for errors (:mod:`~bls_pipeline.server.logs`), and on stop leaves no
process and no ``/dev/shm`` segment behind.

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
import logging
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bls_pipeline.builder.model_config import CLASSIFIER
from bls_pipeline.errors import ServerError
from bls_pipeline.server import lifecycle, logs
from bls_pipeline.server.admin import AdminKeyError, admin_key, check_key, restriction_args
from bls_pipeline.server.lifecycle import free_port
from bls_pipeline.server.processes import SHM_DIR, StubProcess, cpu_seconds, shm_segments, stub_processes
from bls_pipeline.server.sizing import ServerSizing
from bls_pipeline.server.staging import (
    check_stub_numpy,
    find_native_backends,
    native_backend_models,
    pytriton_root,
    server_environment,
    stage_backends,
)
from bls_pipeline.server.watchdog import StubWatchdog

LOGGER = logging.getLogger(__name__)

# The names callers import from here, whichever room of the package holds them.
__all__ = [
    "LocalTritonServer",
    "ServerOptions",
    "describe_hosting",
    "free_port",
    "native_backend_models",
    "pytriton_root",
]


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
    # Reload a model whose stub died (server.watchdog); needs explicit model control.
    restart_dead_stubs: bool = True
    watchdog_interval_s: float = 1.0
    # Triton's own DALI and ONNX Runtime backends (a folder with dali/ and onnxruntime/);
    # None: the ones tools/build_backends.py built for this environment, staged only when a
    # model of the repository needs them.
    native_backends: Path | None = None
    # The key of the closed admin APIs (server.admin); None: from the environment, else random.
    admin_key: str | None = None
    extra_args: list[str] = field(default_factory=list)


def describe_hosting(server: LocalTritonServer) -> str:
    """One line for the start of a tool: which backends serve the repository's models."""
    native = native_backend_models(Path(server.options.model_repository))
    if native:
        models = ", ".join(f"{model} on {backend}" for model, backend in sorted(native.items()))
        return f"Triton's own backends: {models} (from {server.native_backends}); the rest on the Python backend"
    return "Python backend for every model (DALI and the network in Python-backend models)"


class LocalTritonServer:
    """A ``tritonserver`` child process with its own staged backend directory."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._log_file = None
        self._shm_before: set[str] = set()
        self._stub_segments: set[str] = set()
        self._watchdog: StubWatchdog | None = None
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
        env = server_environment(root)
        check_stub_numpy(env)
        self.sizing = ServerSizing.from_repository(Path(o.model_repository))
        LOGGER.info(
            "memory: %s", self.sizing.describe() if self.sizing else "Triton's defaults (no classifier repository)"
        )
        self.native_backends = find_native_backends(Path(o.model_repository), o.native_backends)
        self._workdir = Path(tempfile.mkdtemp(prefix="bls-triton-"))
        backends = stage_backends(root, self._workdir, self.native_backends)
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
            self._watchdog = StubWatchdog(
                o.watchdog_interval_s, self.stubs, self._running, self.reload_model, self.reloaded_models, self.log_path
            )
            self._watchdog.start()

    def _running(self) -> bool:
        return self.process is not None and self.process.poll() is None

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

    def reload_model(self, model: str, timeout_s: float = 120.0) -> None:
        """Unload and load ``model`` (explicit model control): a fresh stub, same files."""
        for action in ("unload", "load"):
            lifecycle.repository_call(
                self.url, self._admin_key, f"models/{model}/{action}", f"{action} model {model!r}", timeout_s
            )

    def drain(self, timeout_s: float) -> bool:
        """Stop taking requests and let the ones taken finish; whether they did within ``timeout_s``.

        How: :func:`bls_pipeline.server.lifecycle.drain`; it needs explicit model control.
        """
        if not self.options.restart_dead_stubs or self.process is None or self.process.poll() is not None:
            return False
        if not self.is_ready():
            return False  # not serving (a failed start, a dead server): nothing to drain
        return lifecycle.drain(self.url, self._admin_key, timeout_s)

    def wait_ready(self, timeout_s: float) -> None:
        """Poll ``/v2/health/ready`` until it answers 200, the process dies or time runs out."""
        lifecycle.wait_ready(self.process, self.url, timeout_s, self.log_path)

    def is_ready(self) -> bool:
        """Whether the server answers ready now."""
        return lifecycle.is_ready(self.url)

    def log_errors(self, lines: int = logs.LOG_TAIL_LINES) -> str:
        """The last ``lines`` error lines of the server log."""
        return logs.log_errors(self.log_path, lines)

    def log_tail(self, lines: int = logs.LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the server log."""
        return logs.log_tail(self.log_path, lines)

    def stop(self) -> None:
        """Stop the server and its stubs (SIGTERM, then SIGKILL) and remove their segments."""
        if self._watchdog is not None:
            self._watchdog.stop()
        self._watchdog = None
        self.stubs()
        if self.drain(self.options.exit_timeout_s):
            LOGGER.info("%s drained: its requests finished", CLASSIFIER)
        process, self.process = self.process, None
        if process is not None:
            lifecycle.terminate(process, self.options.exit_timeout_s)
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

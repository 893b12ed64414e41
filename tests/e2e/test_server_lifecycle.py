"""Starting and stopping the local server leaves no process and no shared memory behind.

Each start costs 5-10 s on a two-core machine, so there are few: ``tools/serve.py`` stopped
by SIGTERM and by Ctrl-C, :class:`LocalTritonServer` as a context manager, and two starts
that fail before any model runs.

Other servers (other tests, other people) may run on this machine at the same time, so the
checks follow this server's own processes and segments, found in ``/proc`` while it runs,
instead of comparing machine-wide counts.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from bls_pipeline.client import ClassifierClient
from bls_pipeline.errors import ServerError
from bls_pipeline.server.allocator import MALLOC_ARENA_MAX_ENV, SERVER_MALLOC_ARENAS
from bls_pipeline.server.launcher import LocalTritonServer, ServerOptions
from bls_pipeline.server.processes import SHM_DIR, SHM_PREFIX, shm_segments, stub_processes

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
STUB_NAME = "triton_python_backend_stub"
READY_TIMEOUT_S = 180
# tritonserver's --exit-timeout-secs is 10 and serve.py then SIGKILLs the rest.
EXIT_TIMEOUT_S = 40


# --- /proc ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    pgid: int
    state: str
    start_ticks: int
    name: str


def read_proc(pid: int) -> Proc | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may contain spaces.
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    return Proc(pid, int(fields[1]), int(fields[2]), fields[0], int(fields[19]), name)


def all_procs() -> list[Proc]:
    procs = (read_proc(int(entry)) for entry in os.listdir("/proc") if entry.isdigit())
    return [p for p in procs if p is not None]


def descendants(root: int) -> list[Proc]:
    """``root`` and every process below it."""
    procs = all_procs()
    children: dict[int, list[Proc]] = {}
    for p in procs:
        children.setdefault(p.ppid, []).append(p)
    found = [p for p in procs if p.pid == root]
    for p in found:
        found.extend(children.get(p.pid, []))
    return found


def mapped_segments(pids: list[int]) -> set[str]:
    """Python-backend segments that ``pids`` map (the backend unlinks them once both sides map them)."""
    names = set()
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        names.update(re.findall(rf"{SHM_DIR}/({SHM_PREFIX}\S*)", maps))
    return names


@dataclass
class ServerFootprint:
    """What one running server consists of, seen from outside."""

    procs: list[Proc]
    segments: set[str]

    @classmethod
    def of(cls, root_pid: int) -> ServerFootprint:
        procs = descendants(root_pid)
        return cls(procs, mapped_segments([p.pid for p in procs]))

    @property
    def stubs(self) -> list[Proc]:
        return [p for p in self.procs if p.name == STUB_NAME[:15]]

    def survivors(self) -> list[Proc]:
        """Processes of the footprint still alive (same pid and start time), or in one of its groups."""
        groups = {p.pgid for p in self.procs}
        ours = {(p.pid, p.start_ticks) for p in self.procs}
        return [p for p in all_procs() if (p.pid, p.start_ticks) in ours or p.pgid in groups]


def eventually(check, timeout_s: float = 3.0):
    """``check()`` once it is falsy, or its last value after ``timeout_s``.

    A process SIGKILLed a moment ago is still dying; a leaked one stays.
    """
    deadline = time.monotonic() + timeout_s
    while (value := check()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return value


def assert_gone(footprint: ServerFootprint, shm_before: set[str]) -> None:
    assert footprint.stubs, "no Python-backend stub was seen: the test observes nothing"
    assert footprint.segments, "no shared-memory segment was seen: the test observes nothing"
    assert eventually(footprint.survivors) == []
    # A stub left behind would have been reparented: look for any stub that still maps our segments.
    stubs_now = [p for p in all_procs() if p.name == STUB_NAME[:15]]
    assert mapped_segments([p.pid for p in stubs_now]) & footprint.segments == set()
    assert shm_segments() & footprint.segments == set()
    # New names nobody maps are leaks; other servers' segments appear briefly while they start.
    assert eventually(lambda: shm_segments() - shm_before - mapped_segments([p.pid for p in all_procs()])) == set()


# --- tools/serve.py ----------------------------------------------------------------------------


class ServeProcess:
    """``tools/serve.py`` in its own session, its stdout read line by line on a thread."""

    def __init__(self, repository: Path, log_path: Path) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "tools/serve.py",
                f"--model-repository={repository}",
                "--http-port=0",
                "--grpc-port=0",
                "--metrics-port=0",
                f"--log-file={log_path}",
            ],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.output.append(line)
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"serve.py did not print {pattern!r} in {timeout_s} s; output:\n{''.join(self.output)}")

    def close(self) -> None:
        """Stop reading: the process has exited, so its stdout is at its end."""
        self._reader.join(5)
        assert self.process.stdout is not None
        self.process.stdout.close()

    def kill(self, footprint: ServerFootprint | None) -> None:
        """Last resort after a failed test: SIGKILL what this test started."""
        groups = {self.process.pid} | ({p.pgid for p in footprint.procs} if footprint else set())
        for pgid in groups:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.process.wait()


@pytest.mark.parametrize(
    "stop",
    [
        pytest.param(lambda pid: os.kill(pid, signal.SIGTERM), id="SIGTERM"),
        # A terminal's Ctrl-C signals the foreground process group.
        pytest.param(lambda pid: os.killpg(pid, signal.SIGINT), id="Ctrl-C"),
    ],
)
def test_serve_stops_cleanly_on_a_signal(built_repository, tmp_path, stop):
    shm_before = shm_segments()
    serve = ServeProcess(built_repository, tmp_path / "tritonserver.log")
    footprint = None
    try:
        url = serve.wait_for(r"ready: (http://\S+)", READY_TIMEOUT_S).group(1)
        with ClassifierClient(url) as client:
            (prediction,) = client.classify([(REPO_ROOT / "samples" / "chelsea.jpg").read_bytes()])
        assert len(prediction.class_ids) == 5
        footprint = ServerFootprint.of(serve.process.pid)

        stop(serve.process.pid)

        assert serve.process.wait(EXIT_TIMEOUT_S) == 0
        serve.wait_for(r"^stopped", 5)
        assert_gone(footprint, shm_before)
    finally:
        if serve.process.poll() is None or (footprint and footprint.survivors()):
            serve.kill(footprint)
        serve.close()


# --- LocalTritonServer ---------------------------------------------------------------------------


def test_local_server_as_a_context_manager_leaves_nothing_behind(built_repository, tmp_path):
    shm_before = shm_segments()
    options = ServerOptions(built_repository, http_port=0, grpc_port=0, metrics_port=0, log_path=tmp_path / "log")

    with LocalTritonServer(options) as server:
        assert server.is_ready()
        assert server.process is not None
        footprint = ServerFootprint.of(server.process.pid)
        # The server, and the stubs it starts, run with the allocator's bounded arenas.
        for pid in (server.process.pid, *(stub.pid for stub in stub_processes(server.process.pid))):
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert f"{MALLOC_ARENA_MAX_ENV}={SERVER_MALLOC_ARENAS}".encode() in environ, pid

    assert server.process is None
    assert_gone(footprint, shm_before)


def test_a_missing_repository_fails_fast_naming_the_path(tmp_path):
    missing = tmp_path / "no-such-repository"
    started = time.monotonic()

    with pytest.raises(ServerError, match=re.escape(str(missing))):
        LocalTritonServer(ServerOptions(missing, http_port=0, grpc_port=0, metrics_port=0)).start()

    assert time.monotonic() - started < 5


def test_a_corrupt_config_fails_fast_with_a_log_tail_naming_the_model(built_repository, tmp_path):
    repository = tmp_path / "repository"
    # The classifier alone is enough: its config is the one that cannot be parsed.
    shutil.copytree(built_repository / "classifier", repository / "classifier")
    (repository / "classifier" / "config.pbtxt").write_text("name: 'classifier'\nthis is { not a config\n")
    options = ServerOptions(repository, http_port=0, grpc_port=0, metrics_port=0, log_path=tmp_path / "log")
    started = time.monotonic()

    with pytest.raises(ServerError) as caught:
        LocalTritonServer(options).start()

    assert time.monotonic() - started < 60
    first_line, details = str(caught.value).split("\n", 1)
    assert "exited" in first_line
    assert re.search(r"^E\d{4} .*'classifier'", details, re.MULTILINE), details

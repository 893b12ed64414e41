"""The processes of a running ``tritonserver``, read from ``/proc`` and ``/dev/shm``.

The launcher's watchdog finds dead Python-backend stubs with these, the soak measures the
server's memory, and the benchmarks its CPU time. Linux only (``/proc``).

Example::

    for stub in stub_processes(server_pid):
        print(stub.model, proc_status(stub.pid).get("VmRSS"), cpu_seconds(stub.pid))
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

SHM_DIR = Path("/dev/shm")
# The Python backend names its segments after this prefix (one per stub).
SHM_PREFIX = "triton_python_backend_shm_region"


@dataclass(frozen=True)
class StubProcess:
    """A Python-backend stub process of a server: one per model instance."""

    pid: int
    model: str
    shm_region: str


def proc_status(pid: int | str, proc: Path = Path("/proc")) -> dict[str, str]:
    """The fields of ``/proc/<pid>/status`` by name (``"PPid"``, ``"State"``, ``"VmRSS"``, ...),
    values as written there; empty when the process is gone."""
    try:
        status = (proc / str(pid) / "status").read_text()
    except OSError:
        return {}
    return dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)


def _stat_cpu_seconds(stat_file: Path) -> float:
    """User + system CPU seconds of a ``/proc`` ``stat`` file (a process's or a thread's)."""
    stat = stat_file.read_text()
    # Fields after the command name, which may contain spaces, in parentheses: utime is the
    # 14th field of the line, stime the 15th.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | str, proc: Path = Path("/proc")) -> float:
    """User + system CPU time of a process so far, in seconds; 0 when it is gone."""
    try:
        return _stat_cpu_seconds(proc / str(pid) / "stat")
    except OSError:
        return 0.0


def thread_cpu_seconds(pid: int | str, proc: Path = Path("/proc")) -> dict[int, tuple[str, float]]:
    """``{thread id: (thread name, CPU seconds so far)}`` of a live process; empty when it is gone."""
    threads = {}
    for task in (proc / str(pid) / "task").glob("*"):
        try:
            name = (task / "comm").read_text().strip()
            threads[int(task.name)] = (name, _stat_cpu_seconds(task / "stat"))
        except (OSError, ValueError):  # the thread ended meanwhile
            continue
    return threads


def process_children(proc: Path = Path("/proc")) -> dict[int, list[int]]:
    """``{parent pid: [child pids]}`` of every live process, from one pass over ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if entry.name.isdigit():
            parent = proc_status(entry.name, proc).get("PPid")
            if parent and parent.isdigit():
                children.setdefault(int(parent), []).append(int(entry.name))
    return children


def descendants(pid: int, proc: Path = Path("/proc"), *, children: dict[int, list[int]] | None = None) -> set[int]:
    """Every live process below ``pid`` (children, their children, ...); ``children`` (of
    :func:`process_children`) saves reading ``/proc`` again for several roots."""
    if children is None:
        children = process_children(proc)
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def stub_processes(server_pid: int) -> list[StubProcess]:
    """The live Python-backend stubs that ``server_pid`` started (zombies left out).

    A stub's command line is ``stub <repo>/<model>/<version>/model.py <shm region> ...``.
    """
    stubs = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = proc_status(entry.name)
        if fields.get("PPid") != str(server_pid) or fields.get("State", "").startswith(("Z", "X")):
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # it exited meanwhile
            continue
        if len(argv) < 3 or not argv[0].endswith(b"triton_python_backend_stub"):
            continue
        model_file = Path(os.fsdecode(argv[1]))
        stubs.append(StubProcess(int(entry.name), model_file.parent.parent.name, os.fsdecode(argv[2])))
    return stubs


def models_with_dead_stubs(before: list[StubProcess], now: list[StubProcess]) -> set[str]:
    """Models that have fewer live stubs now than ``before`` (a reloaded model has new pids)."""
    expected = Counter(stub.model for stub in before)
    alive = Counter(stub.model for stub in now)
    return {model for model, count in expected.items() if alive[model] < count}


def shm_segments() -> set[str]:
    """Names of the Python backend's shared-memory segments now in ``/dev/shm``."""
    if not SHM_DIR.is_dir():
        return set()
    return {path.name for path in SHM_DIR.iterdir() if path.name.startswith(SHM_PREFIX)}

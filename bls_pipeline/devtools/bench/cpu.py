"""Host CPU per image of a served run, by role: the DALI backend's threads inside
``tritonserver``, its other threads (Triton's core and frontends, other backends), each
model's Python-backend stubs, and the load generator (this process and its children).

Host CPU per image is what limits a host of several GPUs, and where it goes says which
component to make cheaper. Linux only (``/proc``).

Example::

    meter = CpuByRole(server_pid)
    before = meter.snapshot()
    run_load()
    print(cpu_ms_per_image(meter.delta(before, meter.snapshot()), images_served))
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from bls_pipeline.server.processes import (
    cpu_seconds,
    descendants,
    process_children,
    stub_processes,
    thread_cpu_seconds,
)

# Triton's DALI backend names its worker threads "[DALI][TP<n>]..." (the mixed decoder's host
# side, CPU operators) and "[DALI][Executor]", "[DALI][CUDA]...".
DALI_THREAD_PREFIX = "[DALI]"
SERVER_DALI = "server: DALI threads"
SERVER_OTHER = "server: other threads"
LOAD_GENERATOR = "load generator"


@dataclass
class CpuSnapshot:
    """CPU seconds so far: the server's threads, each stub, the load generator's processes."""

    server_threads: dict[int, tuple[str, float]]
    stubs: dict[int, tuple[str, float]]  # pid: (model, seconds)
    load_processes: dict[int, float]
    load_self_and_waited: float


class CpuByRole:
    """Reads :class:`CpuSnapshot` of one server and the load this process generates."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid

    def snapshot(self) -> CpuSnapshot:
        """The CPU seconds of every role now."""
        children = process_children()  # one pass over /proc for both trees
        server_tree = {self.server_pid} | descendants(self.server_pid, children=children)
        stubs = {stub.pid: (stub.model, cpu_seconds(stub.pid)) for stub in stub_processes(self.server_pid)}
        load = {pid: cpu_seconds(pid) for pid in descendants(os.getpid(), children=children) - server_tree}
        times = os.times()
        # This process and the children it has waited for (perf_analyzer runs, client
        # processes that ended): their CPU time no longer shows in /proc.
        waited = times.user + times.system + times.children_user + times.children_system
        return CpuSnapshot(thread_cpu_seconds(self.server_pid), stubs, load, waited)

    @staticmethod
    def delta(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
        """CPU seconds per role between two snapshots (stubs by model, all instances added up).

        A process or thread that started in between counts from zero; one that ended in
        between is lost, except the load generator's children, which this process waited for.
        """
        roles: dict[str, float] = {SERVER_DALI: 0.0, SERVER_OTHER: 0.0}
        for tid, (name, seconds) in after.server_threads.items():
            spent = seconds - before.server_threads.get(tid, (name, 0.0))[1]
            roles[SERVER_DALI if name.startswith(DALI_THREAD_PREFIX) else SERVER_OTHER] += spent
        for pid, (model, seconds) in after.stubs.items():
            key = f"stub: {model}"
            roles[key] = roles.get(key, 0.0) + seconds - before.stubs.get(pid, (model, 0.0))[1]
        live = sum(seconds - before.load_processes.get(pid, 0.0) for pid, seconds in after.load_processes.items())
        roles[LOAD_GENERATOR] = live + after.load_self_and_waited - before.load_self_and_waited
        return roles


def cpu_ms_per_image(roles: dict[str, float], images: float) -> dict[str, float] | None:
    """Milliseconds of CPU per image served for each role, plus ``server total`` (every role
    but the load generator); ``None`` when no image was served."""
    if not images:
        return None
    per_image = {role: seconds * 1e3 / images for role, seconds in roles.items()}
    per_image["server total"] = sum(ms for role, ms in per_image.items() if role != LOAD_GENERATOR)
    return {role: round(ms, 3) for role, ms in per_image.items()}

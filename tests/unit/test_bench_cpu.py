"""CPU per image by role, read from /proc of real processes."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from bls_pipeline.devtools.bench.cpu import LOAD_GENERATOR, SERVER_DALI, SERVER_OTHER, CpuByRole, cpu_ms_per_image

# A stand-in "server": one thread named as the DALI backend names its workers, burning CPU,
# while the main thread burns some too; it prints "ready" once the thread has its name.
SERVER = """
import threading, time, sys
from pathlib import Path

def dali_worker():
    Path(f"/proc/self/task/{threading.get_native_id()}/comm").write_text("[DALI][TP0]Mixe")
    started.set()
    go.wait()
    end = time.thread_time() + 0.6
    while time.thread_time() < end:
        pass
    burned.set()
    finish.wait()  # alive at the second snapshot, like the backend's long-lived workers

started, go, burned, finish = threading.Event(), threading.Event(), threading.Event(), threading.Event()
worker = threading.Thread(target=dali_worker)
worker.start()
started.wait()
print("ready", flush=True)
sys.stdin.readline()
go.set()
end = time.thread_time() + 0.3
while time.thread_time() < end:
    pass
burned.wait()
print("done", flush=True)
sys.stdin.readline()
finish.set()
worker.join()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_cpu_is_split_into_the_servers_dali_threads_its_other_threads_and_the_load_generator():
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        meter = CpuByRole(server.pid)
        before = meter.snapshot()
        server.stdin.write("go\n")
        server.stdin.flush()
        end = time.thread_time() + 0.2  # the load generator: this process
        while time.thread_time() < end:
            pass
        assert server.stdout.readline().strip() == "done"
        roles = meter.delta(before, meter.snapshot())
    finally:
        server.stdin.close()
        server.wait(timeout=10)
        server.stdout.close()

    assert 0.5 <= roles[SERVER_DALI] < 0.9
    assert 0.25 <= roles[SERVER_OTHER] < 0.6
    assert roles[LOAD_GENERATOR] >= 0.18


def test_cpu_per_image_adds_the_server_roles_and_leaves_the_load_generator_out():
    roles = {SERVER_DALI: 1.0, SERVER_OTHER: 0.5, "stub: classifier": 0.5, LOAD_GENERATOR: 2.0}

    assert cpu_ms_per_image(roles, 1000) == {
        SERVER_DALI: 1.0,
        SERVER_OTHER: 0.5,
        "stub: classifier": 0.5,
        LOAD_GENERATOR: 2.0,
        "server total": 2.0,
    }
    assert cpu_ms_per_image(roles, 0) is None

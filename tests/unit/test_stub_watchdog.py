"""Finding a server's Python-backend stubs, and telling which models lost theirs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bls_pipeline.server.launcher import ServerOptions
from bls_pipeline.server.processes import StubProcess, models_with_dead_stubs, stub_processes


def stub(pid: int, model: str) -> StubProcess:
    return StubProcess(pid=pid, model=model, shm_region=f"triton_python_backend_shm_region_{pid}")


@pytest.mark.parametrize(
    ("before", "now", "dead"),
    [
        ([stub(1, "classifier"), stub(2, "preprocessing")], [stub(1, "classifier"), stub(2, "preprocessing")], set()),
        ([stub(1, "classifier"), stub(2, "preprocessing")], [stub(1, "classifier")], {"preprocessing"}),
        # reloaded by someone else: new pid, same count
        ([stub(2, "preprocessing")], [stub(7, "preprocessing")], set()),
        # one of two instances died
        ([stub(2, "preprocessing"), stub(3, "preprocessing")], [stub(3, "preprocessing")], {"preprocessing"}),
        ([], [stub(1, "classifier")], set()),
    ],
)
def test_a_model_with_fewer_live_stubs_than_before_needs_a_reload(before, now, dead):
    assert models_with_dead_stubs(before, now) == dead


def test_stub_processes_finds_children_named_like_a_stub_with_their_model_and_segment(tmp_path: Path):
    # A Python named like the stub, running a model.py that sleeps: the same command line shape.
    fake_stub = tmp_path / "triton_python_backend_stub"
    fake_stub.symlink_to(os.path.realpath(sys.executable))
    model_file = tmp_path / "repo" / "preprocessing" / "1" / "model.py"
    model_file.parent.mkdir(parents=True)
    model_file.write_text("import time\ntime.sleep(30)\n")
    child = subprocess.Popen([fake_stub, model_file, "triton_python_backend_shm_region_x"])
    other = subprocess.Popen([sys.executable, model_file, "triton_python_backend_shm_region_y"])
    try:
        found = stub_processes(os.getpid())
    finally:
        for process in (child, other):
            process.kill()
            process.wait()

    assert found == [StubProcess(child.pid, "preprocessing", "triton_python_backend_shm_region_x")]


def test_dead_children_are_not_live_stubs(tmp_path: Path):
    fake_stub = tmp_path / "triton_python_backend_stub"
    fake_stub.symlink_to(os.path.realpath(sys.executable))
    child = subprocess.Popen([fake_stub, "-c", "pass"])
    while Path(f"/proc/{child.pid}/status").read_text().find("State:\tZ") < 0:
        time.sleep(0.01)  # a zombie until reaped, like a killed stub that tritonserver has not reaped
    try:
        assert stub_processes(os.getpid()) == []
    finally:
        child.wait()


def test_the_watchdog_needs_explicit_model_control_and_can_be_turned_off(tmp_path: Path):
    from bls_pipeline.server.launcher import LocalTritonServer

    on = LocalTritonServer(ServerOptions(tmp_path)).command(tmp_path, tmp_path / "tritonserver")
    off = LocalTritonServer(ServerOptions(tmp_path, restart_dead_stubs=False)).command(
        tmp_path, tmp_path / "tritonserver"
    )

    assert {"--model-control-mode=explicit", "--load-model=*"} <= set(on)
    assert not any(arg.startswith(("--model-control-mode", "--load-model")) for arg in off)


def test_the_admin_apis_need_a_per_server_key_unless_one_is_given(tmp_path: Path, monkeypatch):
    from bls_pipeline.server.admin import ADMIN_HEADER, KEY_ENV, KEY_FILE_ENV
    from bls_pipeline.server.launcher import LocalTritonServer

    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)
    first, second = (LocalTritonServer(ServerOptions(tmp_path)) for _ in range(2))
    for options in (ServerOptions(tmp_path), ServerOptions(tmp_path, restart_dead_stubs=False)):
        server = LocalTritonServer(options)
        restricted = [arg for arg in server.command(tmp_path, tmp_path / "tritonserver") if "restricted" in arg]
        apis = f"shared-memory,trace,logging,model-repository:{ADMIN_HEADER}={server._admin_key}"
        assert restricted == [f"--http-restricted-api={apis}", f"--grpc-restricted-protocol={apis}"]
    assert len(first._admin_key) == 64 and first._admin_key != second._admin_key
    given = LocalTritonServer(ServerOptions(tmp_path, admin_key="k" * 20))
    assert given._admin_key == "k" * 20 and given.admin_key_source == "given"

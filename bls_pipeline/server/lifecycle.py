"""The ``tritonserver`` process's lifecycle: ports, readiness, the admin calls, drain and stop.

A server is started in its own process group, polled on ``/v2/health/ready`` until it is ready,
drained before it stops (the classifier unloaded first, so that the requests it took finish),
then sent SIGTERM and, when that does not end it in time, SIGKILL for its whole group.

Example::

    wait_ready(process, url, 300.0, log_path)
    drain(url, admin_key, 10.0)
    terminate(process, exit_timeout_s=10)
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from bls_pipeline.builder.model_config import CLASSIFIER
from bls_pipeline.errors import ServerError
from bls_pipeline.server.admin import ADMIN_HEADER
from bls_pipeline.server.logs import log_errors, log_tail

LOGGER = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def is_ready(url: str) -> bool:
    """Whether the server at ``url`` answers ready now."""
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_ready(process: subprocess.Popen[bytes] | None, url: str, timeout_s: float, log_path: Path | None) -> None:
    """Poll ``/v2/health/ready`` until it answers 200, the process dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is None or process.poll() is not None:
            code = None if process is None else process.returncode
            raise ServerError(
                f"tritonserver exited with code {code} while starting; errors:\n{log_errors(log_path)}\n"
                f"log {log_path} ends:\n{log_tail(log_path)}"
            )
        if is_ready(url):
            LOGGER.info("tritonserver ready at %s (pid %d, log %s)", url, process.pid, log_path)
            return
        time.sleep(0.25)
    raise ServerError(
        f"tritonserver (pid {process.pid if process else '?'}) not ready after {timeout_s:.0f} s; "
        f"log {log_path}:\n{log_tail(log_path)}"
    )


def repository_call(url: str, admin_key: str, path: str, what: str, timeout_s: float) -> bytes:
    """POST to the (closed) model-repository API with the admin key; the answer's body."""
    request = urllib.request.Request(
        f"{url}/v2/repository/{path}", data=b"", method="POST", headers={ADMIN_HEADER: admin_key}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        raise ServerError(f"cannot {what}: HTTP {exc.code} {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ServerError(f"cannot {what}: {exc}") from None


def drain(url: str, admin_key: str, timeout_s: float) -> bool:
    """Unload the classifier and wait until it is gone; whether it was within ``timeout_s``.

    tritonserver's own SIGTERM handling refuses every new inference at once, the BLS calls
    of requests it already took included, so those fail ("Server not ready"). Unloading the
    classifier first (explicit model control) turns readiness false and refuses new
    requests while its sub-models still answer the requests it holds; Triton finishes
    the model's in-flight requests before it unloads it. Once it is unloaded, the server
    with the sub-models alone reports ready again until the SIGTERM that follows at once
    (measured: ~20 ms; nothing routes to it then, as the classifier is gone).
    """
    deadline = time.monotonic() + timeout_s
    try:
        repository_call(url, admin_key, f"models/{CLASSIFIER}/unload", f"unload {CLASSIFIER!r}", timeout_s)
        while time.monotonic() < deadline:
            index = json.loads(repository_call(url, admin_key, "index", "read the repository index", timeout_s))
            states = {entry.get("name"): entry.get("state") for entry in index}
            if states.get(CLASSIFIER) != "UNLOADING" and states.get(CLASSIFIER) != "READY":
                return True
            time.sleep(0.01)
    except (ServerError, ValueError) as exc:
        LOGGER.warning("draining %r: %s", CLASSIFIER, exc)
    return False


def terminate(process: subprocess.Popen[bytes], exit_timeout_s: int) -> None:
    """SIGTERM, time for the server's own exit timeout and 10 s more, then SIGKILL for its group."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        grace_s = exit_timeout_s + 10
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            LOGGER.warning("tritonserver did not stop in %d s: killing it", grace_s)
    kill_group(process.pid)
    process.wait()


def kill_group(pgid: int) -> None:
    """SIGKILL whatever is left of the server's process group (stubs that outlived it)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass

"""Faults: a sub-model's stub process dies under load, model files are missing or corrupt,
and the server is reachable only on the loopback interface.

What tritonserver 2.51 itself does when a Python-backend stub dies: nothing. The model keeps
reporting ready and every request to it fails after about a second with "Stub process
'preprocessing_0_0' is not healthy." (checked below with the watchdog off).
:class:`LocalTritonServer`'s watchdog reloads such a model, and the endpoint recovers
without a server restart.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from bls_pipeline.builder import model_config as mc
from bls_pipeline.client import ClassifierClient, ClientError
from bls_pipeline.errors import ServerError
from bls_pipeline.request.padding import pad_batch
from bls_pipeline.server.launcher import LocalTritonServer, ServerOptions
from tests.conftest import DECODER_PROBABILITY_TOLERANCE, device_of, encode, repository_fixture
from tests.e2e._support import copy_repository, hosting_of, raw_infer, scores_by_class, start_server, stub_of

pytestmark = [pytest.mark.e2e, pytest.mark.gpu_suite]

NOT_HEALTHY = "preprocessing: Stub process 'preprocessing_0_0' is not healthy."
# What a client sees while a stub is dead, by the model whose stub it is: the classifier
# names the sub-model; the classifier's own stub is reported by Triton itself.
STUB_ERRORS = {"preprocessing": NOT_HEALTHY, "classifier": "Stub process 'classifier_0_0' is not healthy."}


@pytest.fixture(scope="module")
def cat_jpeg(photos) -> bytes:
    return encode(photos["chelsea"], "JPEG", quality=90)


def _send_until(url: str, image: bytes, stop: threading.Event, log: list[tuple[float, str | None]]) -> None:
    with ClassifierClient(url) as client:
        while not stop.is_set():
            try:
                client.classify([image])
                log.append((time.monotonic(), None))
            except ClientError as exc:
                log.append((time.monotonic(), str(exc)))


@pytest.mark.parametrize(
    ("hosting", "model"),
    # On Triton's own backends the classifier is the only Python-backend model, so the only
    # stub (on a GPU the network's stub runs beside it: the classifier's is the one killed).
    [
        ("python", "preprocessing"),
        ("native", "classifier"),
        ("gpu-python", "preprocessing"),
        ("gpu-native", "classifier"),
    ],
)
def test_killing_a_stub_fails_requests_in_flight_clearly_and_the_endpoint_recovers(
    request, hosting, model, tmp_path, cat_jpeg
):
    built = request.getfixturevalue(repository_fixture(hosting))
    # One stub per model, so that the killed one serves every request (a GPU build runs 8
    # classifier instances).
    repository = copy_repository(built, tmp_path / "repository", instances=1)
    server = start_server(repository, tmp_path / "tritonserver.log")
    try:
        assert server.process is not None
        server_pid = server.process.pid
        with ClassifierClient(server.url) as client:
            (before,) = client.classify([cat_jpeg], top_k=1000)
        stub = stub_of(server, model)
        stop, logs = threading.Event(), [[], []]
        senders = [threading.Thread(target=_send_until, args=(server.url, cat_jpeg, stop, log)) for log in logs]
        for sender in senders:
            sender.start()
        time.sleep(1.0)

        killed_at = time.monotonic()
        os.kill(stub.pid, signal.SIGKILL)
        deadline = killed_at + 60
        while time.monotonic() < deadline and not any(
            t > killed_at + 0.5 and e is None for log in logs for t, e in log
        ):
            time.sleep(0.2)
        time.sleep(1.0)  # and keep serving a while after the recovery
        stop.set()
        for sender in senders:
            sender.join()

        outcomes = sorted((t, e) for log in logs for t, e in log)
        errors = [e for t, e in outcomes if e is not None]
        assert errors, "no request failed: the stub was not killed"
        last_error = max(t for t, e in outcomes if e is not None)
        recovered = [t for t, e in outcomes if e is None and t > last_error]
        assert recovered, f"no request succeeded after the last error; errors: {errors[-3:]}"
        # Every failure names the dead model's stub and is the server's (500), not the image's (400).
        assert STUB_ERRORS[model] in errors, set(errors)
        # While the classifier itself reloads, Triton answers "unknown model: 'classifier' ...".
        assert all(e.startswith(f"{model}: ") or f"'{model}" in e for e in errors), set(errors)
        assert last_error - killed_at < 20, f"failures went on for {last_error - killed_at:.1f} s"
        assert server.reloaded_models == [model]
        assert server.process is not None and server.process.pid == server_pid  # no restart
        assert stub_of(server, model).pid != stub.pid
        with ClassifierClient(server.url) as client:
            (after,) = client.classify([cat_jpeg], top_k=1000)
        # On a GPU the reloaded model's nvJPEG decoder and the FP16 network promise no
        # bit-identical results across instances, only the decoder tolerance.
        atol = DECODER_PROBABILITY_TOLERANCE if device_of(built) == "gpu" else 1e-6
        np.testing.assert_allclose(scores_by_class(after), scores_by_class(before), atol=atol, rtol=0)
    finally:
        server.stop()


@pytest.mark.parametrize("hosting", ["python", "gpu-python"])
def test_without_the_watchdog_a_dead_stub_fails_every_request_while_triton_says_ready(
    request, hosting, tmp_path, cat_jpeg
):
    # One preprocessing stub, so that killing it leaves none (a GPU build runs 2 instances).
    repository = copy_repository(
        request.getfixturevalue(repository_fixture(hosting)), tmp_path / "repository", instances=1
    )
    # A model whose stub is dead cannot unload: do not wait the default 10 s for it on stop.
    server = start_server(repository, tmp_path / "tritonserver.log", restart_dead_stubs=False, exit_timeout_s=1)
    try:
        os.kill(stub_of(server, "preprocessing").pid, signal.SIGKILL)
        time.sleep(2.0)
        with ClassifierClient(server.url) as client:
            for _ in range(2):
                with pytest.raises(ClientError) as raised:
                    client.classify([cat_jpeg])
                assert str(raised.value) == NOT_HEALTHY
        with urllib.request.urlopen(f"{server.url}/v2/models/preprocessing/ready") as response:
            assert response.status == 200
        assert [stub.model for stub in server.stubs()].count("preprocessing") == 0
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("fault", "messages"),
    [
        ("missing", {"python": "no network file: expected {path}", "native": "failed to stat file {path}"}),
        ("corrupt", dict.fromkeys(("python", "native"), "Load model from {path} failed:Protobuf parsing failed.")),
    ],
)
def test_a_missing_or_corrupt_network_file_fails_the_start_fast_naming_the_file(
    built_repository, tmp_path, fault, messages
):
    repository = copy_repository(built_repository, tmp_path / "repository")
    version = repository / mc.NETWORK / "1"
    onnx = version / "model.onnx"
    # On the CPU the network is model.onnx. On a GPU it is the first of model.plan (where
    # TensorRT is), model.pt (torch CUDA) and model.onnx (ONNX Runtime's CUDA provider) that
    # exists, always in a Python-backend model: every network file goes, or is corrupt.
    on_gpu = device_of(built_repository) == "gpu"
    files = sorted(path for path in version.glob("model.*") if path.suffix != ".py") if on_gpu else [onnx]
    for path in files:
        if fault == "missing":
            path.unlink()
        else:
            path.write_bytes(b"not an ONNX model\x00\xff" * 1000)
    started = time.monotonic()

    with pytest.raises(ServerError) as raised:
        start_server(repository, tmp_path / "tritonserver.log")

    assert time.monotonic() - started < 60
    assert str(raised.value).startswith("tritonserver exited with code 1 while starting")
    if on_gpu and fault == "corrupt":
        # Which runtime reads first depends on what is installed; its error names its file.
        assert any(str(path) in str(raised.value) for path in files), str(raised.value)[-2000:]
    else:
        message = messages["python" if on_gpu else hosting_of(built_repository)]
        assert message.format(path=onnx) in str(raised.value)


# A step in front of DALI's decoder that fails as a GPU out of memory does: DALI reports it
# as an operator error, the text the classifier once took for a bad image.
CUDA_FAULT = """

def _cuda_fault(sample):
    raise RuntimeError("CUDA runtime API error cudaErrorMemoryAllocation (2):\\nout of memory")
"""


@pytest.mark.parametrize("hosting", ["python", "gpu-python"])
def test_a_cuda_error_in_preprocessing_is_internal_logged_and_not_retried_image_by_image(
    request, hosting, tmp_path, cat_jpeg
):
    # Python-hosted only: the fault is injected into dali.py as a python_function, which the
    # native backend (serving the model.dali serialized at build) cannot run. On a GPU it runs
    # on the CPU in front of the mixed decoder, as on the CPU.
    repository = copy_repository(request.getfixturevalue(repository_fixture(hosting)), tmp_path / "repository")
    dali = repository / "preprocessing" / "1" / "dali.py"
    decoder = "    images = fn.decoders.image("
    source = dali.read_text()
    assert decoder in source
    failing = "    encoded = fn.python_function(encoded, function=_cuda_fault)\n" + decoder
    dali.write_text(source.replace(decoder, failing) + CUDA_FAULT)
    # The fault is for requests: the warmup samples would hit it first and fail the load.
    config_path = repository / "preprocessing" / "config.pbtxt"
    config = mc.read_config(config_path)
    del config.model_warmup[:]
    mc.write_config(config_path, config)
    log_path = tmp_path / "tritonserver.log"
    server = start_server(repository, log_path)
    try:
        result, status, message = raw_infer(server.url, pad_batch([cat_jpeg, cat_jpeg, cat_jpeg]))
    finally:
        server.stop()

    assert result is None and status == "500"  # the server's fault (INTERNAL), not 400
    assert message.startswith("preprocessing: Error in CPU operator `nvidia.dali.fn.python_function`")
    assert message.endswith("out of memory") and "\n" not in message
    log = log_path.read_text()
    # One failed BLS call, logged with DALI's full text: no image-by-image retry.
    assert log.count("preprocessing failed: ") == 1
    assert "cudaErrorMemoryAllocation" in log


# --- security -----------------------------------------------------------------------------------


def _listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp*) that listen on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def _other_local_addresses() -> set[str]:
    """IPv4 addresses of this machine other than loopback ones (none on some machines)."""
    addresses = set()
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            addresses.add(info[4][0])
    except socket.gaierror:
        pass
    try:
        # Connecting a UDP socket sends nothing; it picks the interface of the default route.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("10.254.254.254", 9))
            addresses.add(probe.getsockname()[0])
    except OSError:
        pass
    return {a for a in addresses if not a.startswith(("127.", "0."))}


def test_the_local_server_listens_on_loopback_only(triton_server):
    options = triton_server.options
    # 127.0.0.1 in /proc/net/tcp, and as the IPv4-mapped ::ffff:127.0.0.1 in tcp6 (gRPC)
    loopback = {"0100007F", "0000000000000000FFFF00000100007F"}

    for port in (options.http_port, options.grpc_port, options.metrics_port):
        listening = _listening_addresses(port)
        assert listening and listening <= loopback, (port, listening)
    for address in _other_local_addresses():  # e.g. the address of eth0
        with pytest.raises(OSError):
            socket.create_connection((address, options.http_port), timeout=2).close()


def test_server_options_bind_loopback_by_default(tmp_path):
    command = LocalTritonServer(ServerOptions(tmp_path)).command(tmp_path, tmp_path / "tritonserver")

    for flag in ("--http-address", "--grpc-address", "--metrics-address"):
        assert f"{flag}=127.0.0.1" in command


def test_the_model_repository_api_is_refused_without_the_servers_key(triton_server):
    request = urllib.request.Request(
        f"{triton_server.url}/v2/repository/models/preprocessing/unload", data=b"", method="POST"
    )

    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)

    refused.value.close()
    assert refused.value.code in (401, 403)
    with urllib.request.urlopen(f"{triton_server.url}/v2/models/preprocessing/ready", timeout=10) as response:
        assert response.status == 200

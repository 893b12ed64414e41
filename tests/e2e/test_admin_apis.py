"""The admin APIs of a real server are closed without the key header and open with it.

Shared-memory registration, trace and log settings, and loading or unloading models are
refused to a client without the key header (``bls-admin-key`` over HTTP,
``triton-grpc-protocol-bls-admin-key`` over gRPC), and work with it; inference, health,
metadata and statistics need no key.
"""

from __future__ import annotations

import pytest

from bls_pipeline.client import ClassifierClient, host_port
from bls_pipeline.server.admin import ADMIN_HEADER, GRPC_ADMIN_HEADER
from tests.e2e._support import start_server

pytestmark = pytest.mark.e2e

KEY = "e2e-admin-key-0123456789abcdef"
HEADERS = {"http": ADMIN_HEADER, "grpc": GRPC_ADMIN_HEADER}


@pytest.fixture(scope="module")
def server(native_repository, tmp_path_factory):
    server = start_server(native_repository, tmp_path_factory.mktemp("admin") / "tritonserver.log", admin_key=KEY)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["http", "grpc"])
def admin_client(request, server):
    """A raw ``tritonclient`` of the protocol, to call the admin APIs themselves."""
    import tritonclient.grpc
    import tritonclient.http

    module, url = (tritonclient.http, server.url) if request.param == "http" else (tritonclient.grpc, server.grpc_url)
    client = module.InferenceServerClient(host_port(url))
    client.with_key = {HEADERS[request.param]: KEY}
    client.wrong_key = {HEADERS[request.param]: "not-the-key-0123456789"}
    # The other protocol's header name carries the right key, and still does not open the API.
    client.other_header = {HEADERS["grpc" if request.param == "http" else "http"]: KEY}
    yield client
    client.close()


@pytest.fixture
def shm_region():
    """A real POSIX shared-memory region, as a client registers it."""
    import tritonclient.utils.shared_memory as shm

    handle = shm.create_shared_memory_region("bls_admin_test", "/bls_admin_test", 64)
    yield "/bls_admin_test"
    shm.destroy_shared_memory_region(handle)


def _calls(client, shm_key: str):
    """Each closed API as one call taking the request headers."""
    return {
        "register shared memory": lambda headers: client.register_system_shared_memory(
            "bls_admin_test", shm_key, 64, headers=headers
        ),
        "trace settings": lambda headers: client.update_trace_settings(
            settings={"trace_rate": "1000"}, headers=headers
        ),
        "log settings": lambda headers: client.update_log_settings(settings={"log_verbose_level": 0}, headers=headers),
        "unload a model": lambda headers: client.unload_model("preprocessing", headers=headers),
        "load a model": lambda headers: client.load_model("preprocessing", headers=headers),
    }


@pytest.mark.parametrize(
    "api", ["register shared memory", "trace settings", "log settings", "unload a model", "load a model"]
)
def test_a_closed_api_is_refused_without_the_key_or_with_a_wrong_one(admin_client, shm_region, api):
    from tritonclient.utils import InferenceServerException

    call = _calls(admin_client, shm_region)[api]
    for headers in (None, admin_client.wrong_key, admin_client.other_header):
        with pytest.raises(InferenceServerException) as refused:
            call(headers)
        assert "restricted" in refused.value.message().lower() or "denied" in str(refused.value).lower(), refused.value


def test_with_the_key_every_closed_api_works(admin_client, shm_region, server, photos):
    calls = _calls(admin_client, shm_region)
    calls["register shared memory"](admin_client.with_key)
    try:
        assert admin_client.get_system_shared_memory_status(headers=admin_client.with_key)
    finally:
        admin_client.unregister_system_shared_memory("bls_admin_test", headers=admin_client.with_key)
    calls["trace settings"](admin_client.with_key)
    calls["log settings"](admin_client.with_key)
    calls["unload a model"](admin_client.with_key)
    calls["load a model"](admin_client.with_key)
    assert admin_client.is_model_ready("preprocessing")
    server.wait_ready(120)


def test_inference_health_metadata_and_statistics_need_no_key(admin_client, server, photos):
    from tests.conftest import encode

    assert admin_client.is_server_live() and admin_client.is_server_ready()
    assert admin_client.get_server_metadata() and admin_client.get_model_metadata("classifier")
    assert admin_client.get_inference_statistics("classifier")
    with ClassifierClient(server.grpc_url) as client:
        (prediction,) = client.classify([encode(photos["chelsea"], "JPEG")])
    assert prediction.class_ids[0] == 285

"""The classifier's two input forms: padded ``IMAGE`` rows and ``IMAGE_BYTES`` files, one request, one form."""

from __future__ import annotations

import numpy as np
import pytest

from bls_pipeline import contract
from bls_pipeline.builder import model_config as mc
from bls_pipeline.client import (
    DEFAULT_PORTS,
    DEFAULT_PROTOCOL,
    PROTOCOLS,
    ClassifierClient,
    ClientError,
    endpoint,
    files_batch,
    image_input,
    tritonclient_module,
)
from bls_pipeline.errors import InvalidImageError, InvalidRequestError
from bls_pipeline.request.orchestration import ClassifierSettings, prepare_request
from bls_pipeline.request.padding import pad_batch
from tests.conftest import encode

SETTINGS = ClassifierSettings(max_batch_size=4, max_image_bytes=100_000)


@pytest.fixture(scope="module")
def images(photos) -> list[bytes]:
    # BMP stores rows bottom-up: a black top row ends the file in zero bytes, which both
    # forms must keep.
    black_top = photos["coffee"][:64, :64].copy()
    black_top[:8] = 0
    bmp = encode(black_top, "BMP")
    assert bmp.endswith(b"\0" * 64)
    return [encode(photos["chelsea"][:80, :80], "JPEG"), bmp, encode(photos["rocket"][:64, :64], "PNG")]


def _prepare(rows=None, encoded=None, *, top_k=None, settings=SETTINGS):
    return prepare_request(rows, encoded=encoded, top_k=top_k, settings=settings, num_classes=10)


def test_both_forms_give_the_same_images_and_top_k(images):
    padded = _prepare(pad_batch(images), top_k=3)
    files = _prepare(encoded=files_batch(images), top_k=3)

    assert files.images == padded.images == images
    assert files.top_k == padded.top_k == 3


@pytest.mark.parametrize(
    ("rows", "encoded", "given"),
    [(None, None, "neither"), (np.ones((1, 4), np.uint8), files_batch([b"abcd"]), "both")],
)
def test_a_request_carries_exactly_one_form(rows, encoded, given):
    with pytest.raises(InvalidRequestError) as raised:
        _prepare(rows, encoded)

    assert str(raised.value) == f"a request carries exactly one of the inputs IMAGE or IMAGE_BYTES, got {given}"


def test_an_empty_file_is_the_same_empty_image_as_an_all_zero_row(images):
    with pytest.raises(InvalidImageError) as from_files:
        _prepare(encoded=files_batch([images[0], b""]))
    with pytest.raises(InvalidImageError) as from_rows:
        _prepare(np.vstack([pad_batch([images[0]]), np.zeros((1, len(images[0])), np.uint8)]))

    assert str(from_files.value) == str(from_rows.value) == "image 1: empty image"


def test_a_bad_file_is_refused_naming_its_index(images):
    with pytest.raises(InvalidImageError) as raised:
        _prepare(encoded=files_batch([images[0], images[1], b"not an image at all"]))

    assert str(raised.value).startswith("image 2: ")


def test_more_files_than_the_max_batch_size_are_refused():
    with pytest.raises(InvalidRequestError, match="request holds 5 images, over the max batch size of 4"):
        _prepare(encoded=files_batch([b"x"] * 5))


def test_files_over_the_request_byte_limit_are_refused_before_any_is_read():
    settings = ClassifierSettings(max_batch_size=4, max_image_bytes=1000, max_request_bytes=2500)
    # Unreadable files: refused for their size first, so their content is never looked at.
    at_limit, over = files_batch([b"\xff\xd8\xff" + b"x" * 1247] * 2), files_batch([b"\xff\xd8\xff" + b"x" * 1248] * 2)

    with pytest.raises(InvalidImageError):
        _prepare(encoded=at_limit, settings=settings)
    with pytest.raises(InvalidRequestError) as raised:
        _prepare(encoded=over, settings=settings)
    assert str(raised.value) == "IMAGE_BYTES is 2502 bytes (shape [2, 1]), over the limit of 2500 bytes per request"


@pytest.mark.parametrize(
    ("encoded", "message"),
    [
        (np.array([b"ab", b"cd"], dtype=object), "IMAGE_BYTES must have shape [batch, 1], got [2]"),
        (np.array([["ab"]], dtype=object), "IMAGE_BYTES must hold BYTES elements, got object"),
    ],
)
def test_a_malformed_bytes_tensor_is_refused(encoded, message):
    with pytest.raises(InvalidRequestError) as raised:
        _prepare(encoded=encoded)

    assert str(raised.value) == message


@pytest.mark.parametrize("target", mc.TARGETS)
def test_both_forms_are_optional_inputs_of_the_classifier_on_every_target(target):
    from bls_pipeline.builder.repository import RepositorySpec

    inputs = {
        i.name: i
        for i in RepositorySpec(target=target, max_batch_size=4, num_classes=7).configs()[contract.CLASSIFIER].input
    }

    assert set(inputs) == {contract.IMAGE_INPUT, contract.IMAGE_BYTES_INPUT}
    assert all(i.optional for i in inputs.values())
    assert inputs[contract.IMAGE_INPUT].allow_ragged_batch
    assert mc.model_config_pb2.DataType.Name(inputs[contract.IMAGE_BYTES_INPUT].data_type) == "TYPE_STRING"
    assert list(inputs[contract.IMAGE_BYTES_INPUT].dims) == [1]
    assert contract.IMAGE_BYTES.datatype == "BYTES"


@pytest.mark.parametrize(
    ("url", "protocol", "expected"),
    [
        (None, None, (DEFAULT_PROTOCOL, f"127.0.0.1:{DEFAULT_PORTS[DEFAULT_PROTOCOL]}")),
        (None, "http", ("http", "127.0.0.1:8000")),
        (None, "grpc", ("grpc", "127.0.0.1:8001")),
        ("10.0.0.5:9001", None, (DEFAULT_PROTOCOL, "10.0.0.5:9001")),
        ("10.0.0.5:9000", "http", ("http", "10.0.0.5:9000")),
        ("http://10.0.0.5:9000/", None, ("http", "10.0.0.5:9000")),
        ("https://example.org:443", None, ("http", "example.org:443")),
        ("grpc://10.0.0.5:9001", None, ("grpc", "10.0.0.5:9001")),
        ("grpc://10.0.0.5:9001", "grpc", ("grpc", "10.0.0.5:9001")),
    ],
)
def test_the_protocol_comes_from_the_argument_the_url_scheme_or_the_default(url, protocol, expected):
    assert endpoint(url, protocol) == expected


@pytest.mark.parametrize(
    ("url", "protocol", "message"),
    [
        ("http://10.0.0.5:8000", "grpc", "the scheme of http://10.0.0.5:8000 says http, but the protocol is grpc"),
        ("grpc://10.0.0.5:8001", "http", "the scheme of grpc://10.0.0.5:8001 says grpc, but the protocol is http"),
        (None, "udp", "unknown protocol 'udp': expected one of grpc, http"),
    ],
)
def test_a_protocol_that_contradicts_the_url_is_refused(url, protocol, message):
    with pytest.raises(ClientError) as raised:
        endpoint(url, protocol)

    assert str(raised.value) == message


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    ("form", "name", "datatype"), [("padded", "IMAGE", "UINT8"), ("bytes", "IMAGE_BYTES", "BYTES")]
)
def test_the_client_input_of_each_form_on_each_protocol(protocol, form, name, datatype):
    images = [b"\xff\xd8abc", b"\x89PNG-longer-file"]

    tensor = image_input(tritonclient_module(protocol), images, form)

    assert (tensor.name(), tensor.datatype()) == (name, datatype)
    assert tensor.shape() == ([2, len(images[1])] if form == "padded" else [2, 1])


def test_the_bytes_form_holds_each_file_as_it_is():
    batch = files_batch([b"ab", b"", bytearray(b"c\0")])

    assert batch.shape == (3, 1) and batch.dtype == object
    assert list(batch[:, 0]) == [b"ab", b"", b"c\0"]


def test_an_unknown_form_is_refused_by_the_client():
    with pytest.raises(ClientError, match="unknown input form 'json': expected one of padded, bytes"):
        ClassifierClient("127.0.0.1:1", form="json")


def test_the_load_generator_sends_either_form():
    from bls_pipeline.devtools.bench.images import benchmark_images
    from bls_pipeline.devtools.load import NO_RETRY, Target, cyclic_groups

    images = benchmark_images()[:3]
    client = Target("127.0.0.1:1", retry=NO_RETRY, protocol="http", form="bytes").client()

    (first, *_) = [client._request(group, None)["inputs"] for group in cyclic_groups([i.data for i in images], 2)]

    assert (first[0].name(), first[0].datatype(), first[0].shape()) == ("IMAGE_BYTES", "BYTES", [2, 1])


def test_the_bench_sends_the_bytes_form_only_to_endpoints_that_take_it(tmp_path):
    from bls_pipeline.devtools.bench.run import BenchOptions
    from bls_pipeline.errors import BenchError

    assert BenchOptions(repository=tmp_path, endpoints=("bls", "naive"), request_form="bytes").request_form == "bytes"
    with pytest.raises(BenchError, match="ensembles take padded rows only"):
        BenchOptions(repository=tmp_path, endpoints=("bls", "ensemble"), request_form="bytes")
    with pytest.raises(BenchError, match="unknown request form"):
        BenchOptions(repository=tmp_path, request_form="json")


def test_a_model_without_image_bytes_gets_the_way_out_named():
    from bls_pipeline.client import request_failure

    triton = RuntimeError(
        "[StatusCode.INVALID_ARGUMENT] [request id: <id_unknown>] unexpected inference input 'IMAGE_BYTES' for model 'classifier'"
    )

    message = str(request_failure(triton))

    assert "unexpected inference input 'IMAGE_BYTES'" in message and "--form padded" in message and "\n" not in message
    assert str(request_failure(RuntimeError("[400] image 0: not an image"))) == "[400] image 0: not an image"


def test_the_demo_rebuilds_a_repository_from_before_image_bytes(tmp_path, monkeypatch):
    from bls_pipeline import contract
    from bls_pipeline.builder import model_config as mc
    from bls_pipeline.builder.repository import RepositorySpec, write_build_spec
    from bls_pipeline.cli import demo

    monkeypatch.setattr(demo, "native_backends_dir", lambda: None)
    spec = RepositorySpec(target="local", device="cpu", max_batch_size=8, num_classes=10)
    config = spec.configs()[mc.CLASSIFIER]
    write_build_spec(tmp_path, spec)
    (tmp_path / mc.CLASSIFIER).mkdir()
    mc.write_config(tmp_path / mc.CLASSIFIER / "config.pbtxt", config)
    assert demo.rebuild_reason(tmp_path) is None

    del config.input[[tensor.name for tensor in config.input].index(contract.IMAGE_BYTES_INPUT)]
    mc.write_config(tmp_path / mc.CLASSIFIER / "config.pbtxt", config)

    assert "IMAGE_BYTES missing" in demo.rebuild_reason(tmp_path)
    assert demo.rebuild_reason(tmp_path / "absent") is None

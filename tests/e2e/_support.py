"""Helpers of the end-to-end tests that need a server of their own or raw requests."""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from bls_pipeline.builder import model_config as mc
from bls_pipeline.builder.repository import read_build_spec, write_build_spec
from bls_pipeline.client import host_port
from bls_pipeline.devtools.bench.perf import scrape_metrics
from bls_pipeline.server.launcher import LocalTritonServer, ServerOptions, native_backend_models
from bls_pipeline.server.processes import StubProcess


def copy_repository(
    source: Path,
    destination: Path,
    *,
    classifier_parameters: Mapping[str, object] | None = None,
    queue_delay_us: int | None = None,
    models: tuple[str, ...] = (mc.CLASSIFIER, mc.PREPROCESSING, mc.NETWORK),
    instances: int | None = None,
) -> Path:
    """A copy of a built repository (only ``models``), with classifier config changes, and
    with ``instances`` instances of every model when given (a GPU build runs 8 classifiers).

    Cheaper than a build (no ONNX export), and the configs stay protobuf messages.
    """
    spec = read_build_spec(source)
    if spec is not None and {mc.PREPROCESSING, mc.NETWORK} <= set(models):
        # The launcher sizes its memory pools from the spec: it follows the copy's changes.
        if instances is not None:
            counts = ("preprocessing_instances", "network_instances", "classifier_instances")
            spec = dataclasses.replace(spec, **dict.fromkeys(counts, instances))
        if queue_delay_us is not None:
            spec = dataclasses.replace(spec, queue_delay_us=queue_delay_us)
        destination.mkdir(parents=True, exist_ok=True)
        write_build_spec(destination, spec)
    for model in models:
        shutil.copytree(source / model, destination / model)
        if instances is not None:
            config = mc.read_config(destination / model / "config.pbtxt")
            for group in config.instance_group:
                group.count = instances
            mc.write_config(destination / model / "config.pbtxt", config)
    path = destination / mc.CLASSIFIER / "config.pbtxt"
    if mc.CLASSIFIER in models and (classifier_parameters or queue_delay_us is not None):
        config = mc.read_config(path)
        for key, value in (classifier_parameters or {}).items():
            config.parameters[key].string_value = str(value)
        if queue_delay_us is not None:
            config.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
        mc.write_config(path, config)
    return destination


def decoding_failure(device: str) -> str:
    """The classifier's reason for an image DALI's decoder fails on (corrupt PNG pixel data),
    on ``device``: DALI names the decoder ``CPU`` or, on a GPU, ``MIXED`` operator; PNGs go to
    the same CPU codec either way, so its reason is the same."""
    operator = "MIXED" if device == "gpu" else "CPU"
    return f"cannot be decoded (preprocessing: Error in {operator} operator `nvidia.dali.fn.decoders.image`: Failed to decode)"


def hosting_of(repository: Path) -> str:
    """``native`` when a model of ``repository`` runs on Triton's own backends, else ``python``."""
    return "native" if native_backend_models(repository) else "python"


def start_server(repository: Path, log_path: Path, **options: object) -> LocalTritonServer:
    """A started :class:`LocalTritonServer` on free ports; the caller stops it."""
    server = LocalTritonServer(
        ServerOptions(repository, http_port=0, grpc_port=0, metrics_port=0, log_path=log_path, **options)
    )
    server.start()
    return server


def stub_of(server: LocalTritonServer, model: str) -> StubProcess:
    """The one live stub process of ``model``."""
    (stub,) = [stub for stub in server.stubs() if stub.model == model]
    return stub


def raw_infer(
    url: str,
    array: np.ndarray,
    datatype: str = "UINT8",
    parameters: Mapping[str, object] | None = None,
    shape: list[int] | None = None,
):
    """Send ``array`` as ``IMAGE`` with tritonclient; returns (result, None, None) or
    (None, HTTP status, message)."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(host_port(url))
    try:
        image = httpclient.InferInput("IMAGE", shape or list(array.shape), datatype)
        image.set_data_from_numpy(array, binary_data=True)
        try:
            return client.infer(mc.CLASSIFIER, [image], parameters=dict(parameters) if parameters else None), None, None
        except InferenceServerException as exc:
            return None, str(exc.status()), exc.message()
    finally:
        client.close()


def scores_by_class(prediction) -> np.ndarray:
    """A prediction of ``top_k=1000`` as a ``[1000]`` vector indexed by class id."""
    vector = np.zeros(1000, np.float64)
    vector[prediction.class_ids] = prediction.scores
    return vector


def scrape_metrics_until(
    port: int, settled: Callable[[dict[tuple[str, frozenset], float]], bool], timeout_s: float = 10.0
) -> dict[tuple[str, frozenset], float]:
    """:func:`scrape_metrics` again until ``settled(metrics)`` holds or ``timeout_s`` passes.

    The classifier sends its own metrics from a thread at most once a second
    (:mod:`bls_pipeline.serving.metrics`), so they reach the endpoint a little after the
    responses.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        metrics = scrape_metrics(port)
        if settled(metrics) or time.monotonic() > deadline:
            return metrics
        time.sleep(0.1)

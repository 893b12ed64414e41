"""Triton's classification extension, the classifier's per-stage metrics and warmup, on a real server."""

from __future__ import annotations

import numpy as np
import pytest

from bls_pipeline.builder import model_config as mc
from bls_pipeline.builder.repository import warmup_file
from bls_pipeline.client import host_port
from bls_pipeline.devtools.bench.perf import classifier_stages_ms, metric, scrape_metrics, settled_metrics
from bls_pipeline.request.padding import pad_batch
from bls_pipeline.serving.metrics import EXECUTE_IMAGES, REFUSALS, STAGE_DURATION, STAGES
from tests.conftest import PHOTOS, encode
from tests.e2e._support import raw_infer, scrape_metrics_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def jpegs(photos) -> list[bytes]:
    return [encode(photos[name], "JPEG", quality=90) for name in PHOTOS]


def _infer(url: str, images: list[bytes], outputs: list) -> object:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(host_port(url))
    try:
        batch = pad_batch(images)
        tensor = httpclient.InferInput(mc.IMAGE_INPUT, list(batch.shape), "UINT8")
        tensor.set_data_from_numpy(batch, binary_data=True)
        return client.infer(mc.CLASSIFIER, [tensor], outputs=outputs)
    finally:
        client.close()


def test_class_count_gets_tritons_score_index_label_strings_that_match_the_top_k(triton_server, jpegs):
    import tritonclient.http as httpclient

    result = _infer(
        triton_server.url,
        jpegs,
        [
            httpclient.InferRequestedOutput(mc.PROBABILITIES_OUTPUT, class_count=3),
            httpclient.InferRequestedOutput(mc.SCORES_OUTPUT),
            httpclient.InferRequestedOutput(mc.CLASS_IDS_OUTPUT),
            httpclient.InferRequestedOutput(mc.LABELS_OUTPUT),
        ],
    )

    strings = result.as_numpy(mc.PROBABILITIES_OUTPUT)
    assert strings.shape == (3, 3)
    parsed = [[entry.decode().split(":", 2) for entry in row] for row in strings]
    assert [int(row[0][1]) for row in parsed] == list(PHOTOS.values())
    assert [row[0][2] for row in parsed] == ["Egyptian cat", "espresso", "missile"]
    np.testing.assert_array_equal(
        [[int(i) for _, i, _ in row] for row in parsed], result.as_numpy(mc.CLASS_IDS_OUTPUT)[:, :3]
    )
    np.testing.assert_allclose(
        [[float(s) for s, _, _ in row] for row in parsed], result.as_numpy(mc.SCORES_OUTPUT)[:, :3], atol=1e-6
    )
    assert [[label for *_, label in row] for row in parsed] == [
        [label.decode() for label in row[:3]] for row in result.as_numpy(mc.LABELS_OUTPUT)
    ]


def test_without_class_count_the_probabilities_are_the_full_softmax(triton_server, jpegs):
    import tritonclient.http as httpclient

    result = _infer(triton_server.url, jpegs[1:2], [httpclient.InferRequestedOutput(mc.PROBABILITIES_OUTPUT)])

    probabilities = result.as_numpy(mc.PROBABILITIES_OUTPUT)
    assert probabilities.shape == (1, 1000) and probabilities.dtype == np.float32
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-4)
    assert probabilities[0].argmax() == PHOTOS["coffee"]


def test_stage_metrics_count_every_image_and_add_up_to_the_classifier_compute_time(triton_server, client, jpegs):
    port = triton_server.options.metrics_port
    client.classify(jpegs)  # the first request of a fresh stub pays one-time costs
    executions = f"{EXECUTE_IMAGES}_count"
    before = settled_metrics(port)
    for _ in range(10):
        client.classify(jpegs)
    baseline = metric(before, executions, model=mc.CLASSIFIER)
    after = scrape_metrics_until(port, lambda now: metric(now, executions, model=mc.CLASSIFIER) >= baseline + 10)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, model=mc.CLASSIFIER, **labels) - metric(before, name, model=mc.CLASSIFIER, **labels)

    assert delta(f"{EXECUTE_IMAGES}_sum") == 30
    assert delta(f"{EXECUTE_IMAGES}_count") == 10
    stages = {stage: delta(STAGE_DURATION, stage=stage) for stage in STAGES}
    assert all(value > 0 for value in stages.values()), stages
    compute = delta("nv_inference_compute_infer_duration_us")
    # The stages are inside execute; what they leave out (reading the request's
    # parameters, padding the batch, the loop) is small.
    assert 0.8 * compute <= sum(stages.values()) <= compute, (stages, compute)
    assert stages["preprocessing"] + stages["network"] > 0.5 * compute
    # What the GPU benchmark reports from the same two scrapes: ms per execute.
    assert classifier_stages_ms(before, after, mc.CLASSIFIER) == pytest.approx(
        {k: v / 10 / 1e3 for k, v in stages.items()}
    )


def test_refusals_appear_by_reason_on_the_metrics_endpoint(triton_server, jpegs):
    port = triton_server.options.metrics_port
    before = settled_metrics(port)

    _, status, _ = raw_infer(triton_server.url, pad_batch([b"not an image at all"]))
    _, bad_k, _ = raw_infer(triton_server.url, pad_batch(jpegs[:1]), parameters={"top_k": 0})

    after = scrape_metrics_until(
        port,
        lambda now: (
            metric(now, REFUSALS, reason="invalid_request") > metric(before, REFUSALS, reason="invalid_request")
        ),
    )
    assert (status, bad_k) == ("400", "400")
    for reason, count in {"invalid_image": 1, "invalid_request": 1, "undecodable": 0, "submodel_failure": 0}.items():
        assert metric(after, REFUSALS, reason=reason) - metric(before, REFUSALS, reason=reason) == count, reason


def test_ready_sub_models_were_warmed_with_the_real_photograph(triton_server):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(host_port(triton_server.url))
    try:
        # A warmup sample that fails fails the model's load, so a ready model ran its samples.
        for model in (mc.PREPROCESSING, mc.NETWORK):
            assert client.is_model_ready(model)
        # The max batch first: the mixed decoder sizes its hardware share from the first batch.
        network = client.get_model_config(mc.NETWORK)["model_warmup"]
        assert [sample["batch_size"] for sample in network] == [16, 1]
        preprocessing = client.get_model_config(mc.PREPROCESSING)
        images = [sample["inputs"][mc.DALI_INPUT] for sample in preprocessing["model_warmup"]]
        if preprocessing["max_batch_size"] == 0:
            # Unbatched (Triton's DALI backend): one request of 16 copies of the photograph, then one.
            assert [(image["input_data_file"], int(image["dims"][0])) for image in images] == [
                (warmup_file(16), 16),
                ("warmup.jpg", 1),
            ]
        else:
            assert [sample["batch_size"] for sample in preprocessing["model_warmup"]] == [16, 1]
            assert {image["input_data_file"] for image in images} == {"warmup.jpg"}
    finally:
        client.close()


def test_every_metric_the_dashboard_and_autoscaler_query_is_exported(triton_server, client, jpegs):
    from tests.unit.test_deploy import dashboard_metric_names

    client.classify(jpegs[:1])
    live = {name for name, _ in scrape_metrics(triton_server.options.metrics_port)}
    # A CPU-only server exports no GPU metrics.
    wanted = {name for name in dashboard_metric_names() if not name.startswith("nv_gpu_")}

    assert wanted and wanted <= live, wanted - live

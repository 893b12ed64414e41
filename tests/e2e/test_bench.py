"""The benchmark end to end: its comparison models (and the classifier on Triton's own
backends) answer like the classifier, and a ``--quick`` run against a real server writes a
complete result with both hostings and the pipelined in-process limit (no timing assertions).

The benchmark repository holds both hostings whichever one the built repository has: these
tests use the natively hosted build, and need Triton's backends (tests.conftest)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bls_pipeline.devtools.bench.repository import ENDPOINTS, write_bench_repository
from bls_pipeline.devtools.bench.run import check_result_schema
from tests.conftest import PHOTOS, encode

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def bench_server(native_repository, tmp_path_factory):
    from bls_pipeline.server.launcher import LocalTritonServer, ServerOptions

    repository = tmp_path_factory.mktemp("bench") / "model_repository"
    assert write_bench_repository(native_repository, repository) == ENDPOINTS
    options = ServerOptions(model_repository=repository, http_port=0, grpc_port=0, metrics_port=0)
    with LocalTritonServer(options) as server:
        yield server


@pytest.mark.parametrize("endpoint", ["ensemble", "naive", "bls_native", "ensemble_native"])
def test_comparison_endpoints_classify_real_photos_like_the_classifier(bench_server, photos, endpoint):
    from bls_pipeline.client import ClassifierClient

    images = [encode(photos[name], "JPEG", quality=90) for name in PHOTOS]
    # The ensembles feed IMAGE to DALI as it is: they take only the padded form.
    with (
        ClassifierClient(bench_server.url, form="padded") as bls,
        ClassifierClient(bench_server.url, model_name=ENDPOINTS[endpoint], form="padded") as other,
    ):
        expected, got = bls.classify(images, top_k=3), other.classify(images, top_k=3)

    assert [p.class_ids[0] for p in got] == list(PHOTOS.values())
    assert [p.labels[0] for p in got] == [p.labels[0] for p in expected]
    if endpoint != "naive":  # the same models and postprocessing (hosted either way): the same numbers
        np.testing.assert_allclose([p.scores for p in got], [p.scores for p in expected], atol=1e-5, rtol=0)


def test_a_point_slower_than_its_window_is_measured_and_marked_slow_not_failed(bench_server):
    from bls_pipeline.client import host_port
    from bls_pipeline.devtools.bench.images import benchmark_images
    from bls_pipeline.devtools.load import NO_RETRY, Target, cyclic_groups, measure_window, warm_up

    target = Target(host_port(bench_server.url), retry=NO_RETRY, protocol="http", form="padded")
    images = [image.data for image in benchmark_images()]
    single_s = warm_up(target, images, concurrency=4)
    # A window far shorter than one request: nothing starts and ends inside it.
    sample = measure_window(target, cyclic_groups(images, 1), concurrency=4, duration_s=single_s / 100, warmup_s=0.0)

    assert sample.slow and sample.requests >= 1
    assert min(sample.latencies_s) > single_s / 100 and sample.images_per_s > 0


def test_quick_run_writes_a_complete_result_with_both_hostings_and_a_plot(native_repository, tmp_path, capsys):
    from bls_pipeline.cli.bench import main

    json_out, plot = tmp_path / "bench.json", tmp_path / "bench.png"

    assert (
        main(["--repository", str(native_repository), "--quick", "--json-out", str(json_out), "--plot", str(plot)]) == 0
    )

    result = json.loads(json_out.read_text())
    check_result_schema(result)
    assert set(result["endpoints"]) == set(ENDPOINTS)
    assert set(result["ratios"]) == {
        "bls_vs_inprocess", "bls_vs_inprocess_serial", "bls_vs_ensemble", "bls_vs_naive",
        "bls_native_vs_inprocess", "bls_native_vs_inprocess_serial", "bls_native_vs_ensemble_native",
        "bls_native_vs_naive", "bls_native_vs_bls", "bls_cpu_vs_inprocess", "bls_native_cpu_vs_inprocess",
    }  # fmt: skip
    # The in-process limit is the pipelined figure (DALI prefetching on the CPU), at every
    # batch size, with the serial one beside it; the ratios to the limit divide by it.
    batches = {f"batch_{size}" for size in result["config"]["batch_sizes"]}
    assert set(result["in_process"]["pipelined"]) == set(result["in_process"]["inprocess"]) == batches
    assert result["in_process_limit"]["stage"] == "pipelined" and result["images_per_s"]["pipelined"] > 0
    assert result["ratios"]["bls_vs_inprocess"] == result["images_per_s"]["bls"] / result["images_per_s"]["pipelined"]
    assert {f"pipelined_{name}" for name in batches} <= set(result["cpu_ms_per_image"])
    # Server CPU per image for every endpoint and concurrency, and the in-process reference;
    # a point the benchmark reports as slow (a busy machine: every request outlasted its
    # window) has none, since its window's CPU is not its requests'.
    points = {(key, c) for key in ENDPOINTS for c in result["config"]["concurrencies"]}
    slow = {(key, c) for key, c in points if result["endpoints"][key][f"c{c}"]["slow"]}
    assert len(slow) < len(points)
    assert {f"{key}_c{c}" for key, c in points - slow} <= set(result["cpu_ms_per_image"])
    assert "inprocess_batch_1" in result["cpu_ms_per_image"]
    assert "bls_native_cpu_vs_inprocess" in result["targets"]
    assert result["machine"]["cpu_count"] >= 1
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "bls_vs_naive" in capsys.readouterr().out


def test_perf_analyzer_data_is_written_without_a_server(tmp_path):
    from bls_pipeline.cli.bench import main

    path = tmp_path / "data.json"

    assert main(["--write-perf-analyzer-data", str(path)]) == 0
    rows = json.loads(path.read_text())["data"]
    assert len(rows) == 8 and all(row["IMAGE"]["shape"][0] > 1000 for row in rows)

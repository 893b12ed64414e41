"""perf_analyzer output and Triton statistics, parsed (the GPU benchmark's server side)."""

from __future__ import annotations

import pytest

from bls_pipeline.devtools.bench.perf import parse_perf_csv, statistics_delta
from bls_pipeline.errors import BenchError

CSV = (
    "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
    "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency,"
    "Avg latency,request/response,response wait\n"
    "64,8123.4,10,200,1500,30,4200,20,5,7800,9100,9900,12000,7900,0,0\n"
)


def test_perf_csv_gives_throughput_and_latencies_in_ms():
    parsed = parse_perf_csv(CSV)
    assert parsed == {
        "images_per_s": 8123.4,
        "p50_ms": 7.8,
        "p90_ms": 9.1,
        "p99_ms": 12.0,
        "server_queue_ms": 1.5,
        "server_compute_ms": 4.2,
    }


def test_random_perf_analyzer_data_needs_a_folder_for_the_csv():
    from bls_pipeline.devtools.bench.perf import RANDOM_DATA, run_perf_analyzer

    with pytest.raises(ValueError, match="workdir"):
        run_perf_analyzer("efficientnet-b0", RANDOM_DATA, url="127.0.0.1:1", protocol="grpc", concurrency=1)


def test_perf_analyzer_data_names_the_input_it_is_for(tmp_path):
    import json

    from bls_pipeline import contract
    from bls_pipeline.devtools.bench.images import BenchImage
    from bls_pipeline.devtools.bench.perf import write_input_data

    path = write_input_data([BenchImage("x", b"abc", 1, 1)], tmp_path / "data.json", contract.DALI_INPUT)

    assert json.loads(path.read_text())["data"] == [{contract.DALI_INPUT: {"b64": "YWJj", "shape": [3]}}]
    # The built DALI model is unbatched: its input's shape holds the batch of one.
    path = write_input_data(
        [BenchImage("x", b"abc", 1, 1)], tmp_path / "data.json", contract.DALI_INPUT, unbatched=True
    )
    assert json.loads(path.read_text())["data"] == [{contract.DALI_INPUT: {"b64": "YWJj", "shape": [1, 3]}}]


def test_the_classifiers_stage_times_are_read_per_execute_between_two_scrapes():
    from bls_pipeline.devtools.bench.perf import classifier_stages_ms, parse_metrics

    def scrape(executes, trim_us, network_us, other_model_us=0):
        return parse_metrics(
            f'bls_classifier_execute_images_count{{model="classifier_native",version="1"}} {executes}\n'
            f'bls_classifier_stage_duration_us{{model="classifier_native",stage="trim_check",version="1"}} {trim_us}\n'
            f'bls_classifier_stage_duration_us{{model="classifier_native",stage="network",version="1"}} {network_us}\n'
            f'bls_classifier_stage_duration_us{{model="classifier",stage="network",version="1"}} {other_model_us}\n'
        )

    stages = classifier_stages_ms(
        scrape(10, 1000, 20000), scrape(30, 3000, 60000, other_model_us=9e9), "classifier_native"
    )

    assert stages == {"trim_check": 0.1, "preprocessing": 0.0, "network": 2.0, "postprocessing": 0.0}
    assert classifier_stages_ms(scrape(10, 0, 0), scrape(10, 0, 0), "classifier_native") == {}


def test_an_empty_perf_csv_is_an_error():
    with pytest.raises(BenchError, match="no measurement"):
        parse_perf_csv(CSV.splitlines()[0] + "\n")


def _stats(executions, inferences, requests, queue_ms, compute_ms):
    return {
        "executions": executions,
        "inferences": inferences,
        "requests": requests,
        "queue_ns": int(queue_ms * 1e6),
        "compute_ns": int(compute_ms * 1e6),
    }


def test_statistics_delta_gives_the_mean_batch_and_request_times_of_the_window():
    # A BLS sub-model: one request per execution of 32 images.
    before = {"preprocessing": _stats(10, 40, 10, 10.0, 50.0)}
    after = {
        "preprocessing": _stats(30, 680, 30, 60.0, 250.0),
        # The endpoint: 32 one-image requests per execution, each adding the execution's 8 ms.
        "classifier": _stats(2, 64, 64, 64.0, 64 * 8.0),
        "idle": _stats(0, 0, 0, 0.0, 0.0),
    }
    delta = statistics_delta(before, after)
    assert delta["preprocessing"] == {"executions": 20, "mean_batch": 32.0, "queue_ms": 2.5, "compute_ms": 10.0}
    assert delta["classifier"]["mean_batch"] == 32.0
    assert delta["classifier"]["compute_ms"] == pytest.approx(8.0)
    assert "idle" not in delta


def _point(endpoint, concurrency, images_per_s, p99_ms, p50_ms=5.0):
    return {
        "model": endpoint,
        "protocol": "grpc",
        "concurrency": concurrency,
        "images_per_s": images_per_s,
        "p50_ms": p50_ms,
        "p90_ms": p99_ms,
        "p99_ms": p99_ms,
        "server_queue_ms": 0.0,
        "server_compute_ms": 0.0,
        "gpu_util_percent": 50.0,
        "extra": {"endpoint": endpoint, "models": {"preprocessing": {"mean_batch": 32.0, "compute_ms": 9.0}}},
    }


def _form(form: str, images: str, per_request: int, images_per_s: float, p99_ms: float) -> dict:
    return {
        "protocol": "grpc",
        "form": form,
        "images_per_request": per_request,
        "concurrency": 8,
        "processes": 4,
        "images_per_s": images_per_s,
        "p50_ms": p99_ms / 2,
        "p99_ms": p99_ms,
        "request_bytes": 1.5e6,
        "extra": {"images": images, "models": {"preprocessing": {"mean_batch": 64.0, "compute_ms": 12.0}}},
    }


def test_the_gpu_summary_takes_the_best_points_under_the_p99_limit_and_the_table_prints():
    from bls_pipeline.devtools.bench.gpu import format_gpu_table, latency_breakdown, summarize

    result = {
        "in_process": {
            "settings": {"num_threads": 8, "hw_decoder_load": 0.65},
            "preprocessing": {1: 1000.0, 128: 13000.0},
            "network": {1: 1500.0, 128: 18000.0},
            "inprocess": {1: 700.0, 128: 8000.0},
            "pipelined": {128: 12000.0},
            "pipelined_by_photos": {"imagenet-sized": {128: 10000.0}},
            "single_image_ms": 1.5,
            "single_image_stage_ms": {"preprocessing": 0.6, "network": 0.8},
        },
        "endpoints": [
            {
                **_point("bls_native", 1, 200.0, 6.0, p50_ms=4.4),
                "extra": {
                    "endpoint": "bls_native",
                    "models": {},
                    "classifier_stages_ms": {"trim_check": 0.1, "network": 1.9},
                },
            },
            _point("bls_native", 64, 6000.0, 90.0),
            _point("bls_native", 256, 7000.0, 300.0),  # over the p99 limit: not the best
            _point("ensemble_native", 64, 5000.0, 80.0),
            _point("ensemble_native", 1, 250.0, 5.0, p50_ms=3.5),
        ],
        "sub_models_alone": [
            {
                **_point("preprocessing_native", 1, 900.0, 2.0, p50_ms=1.2),
                "extra": {"role": "preprocessing", "models": {}},
            },
            {**_point("efficientnet-b0", 1, 600.0, 2.5, p50_ms=1.6), "extra": {"role": "network", "models": {}}},
        ],
        "forms": [
            _form("bytes", "same size", 32, 7200.0, 120.0),
            _form("padded", "same size", 32, 7400.0, 200.0),  # over the p99 limit
            _form("padded", "varied sizes", 32, 9000.0, 100.0),  # other photographs: not comparable
            _form("bytes", "same size", 64, 9600.0, 60.0),  # the client's default point
            _form("bytes", "imagenet-sized", 64, 8000.0, 90.0),  # against that set's own limit
        ],
    }
    result["forms"][-1]["extra"].update(
        server_cpu_ms_per_image=0.9,
        cpu_ms_per_image={"server: DALI threads": 0.5, "load generator": 0.3, "server total": 0.9},
    )
    result["summary"] = summary = summarize(result)
    # The limit is the pipelined figure; the serial one is reported beside it.
    assert (summary["in_process_limit"], summary["in_process_serial"]) == (12000.0, 8000.0)
    assert summary["bls_best"]["images_per_s"] == 6000.0
    assert summary["bls_over_in_process"] == 0.5
    assert summary["bls_over_ensemble"] == 1.2
    assert summary["bls_single_image_p50_ms"] == 4.4
    assert summary["bls_best_multi_image"]["images_per_request"] == 64
    assert summary["bls_multi_image_over_in_process"] == 0.8
    # The client's default point (64 x 8) on each photo set, against that set's pipelined limit.
    assert summary["client_default_by_photos"] == {
        "same size": {
            "images_per_s": 9600.0,
            "p99_ms": 60.0,
            "pipelined_limit": 12000.0,
            "over_pipelined_limit": 0.8,
            "server_cpu_ms_per_image": None,
        },
        "imagenet-sized": {
            "images_per_s": 8000.0,
            "p99_ms": 90.0,
            "pipelined_limit": 10000.0,
            "over_pipelined_limit": 0.8,
            "server_cpu_ms_per_image": 0.9,
        },
    }
    assert latency_breakdown(result) == {
        "in_process_preprocessing": 0.6,
        "in_process_network": 0.8,
        "in_process_both": 1.5,
        "served_preprocessing_alone": 1.2,
        "served_network_alone": 1.6,
        "ensemble": 3.5,
        "classifier": 4.4,
    }
    table = format_gpu_table(result)
    assert "ONE IMAGE AT CONCURRENCY 1" in table and "served_network_alone" in table
    assert "classifier's own stages per execute: trim_check 0.10, network 1.90" in table
    assert "request forms" in table and "varied sizes" in table
    assert "serial: DALI, then network" in table and "pipelined (the limit)" in table and "12000" in table
    assert "pipelined, imagenet-sized" in table and "bls_native" in table and "settings" not in table
    assert "bytes imagenet-sized 64x8" in table and "server: DALI threads 0.50" in table


def test_request_groups_cycle_through_the_photographs_and_forms_count_their_bytes():
    from bls_pipeline.devtools.bench.forms import request_bytes
    from bls_pipeline.devtools.bench.images import BenchImage
    from bls_pipeline.devtools.load import cyclic_groups

    images = [BenchImage(name, b"x" * size, 1, 1) for name, size in (("a", 10), ("b", 100), ("c", 30))]
    groups = cyclic_groups([image.data for image in images], 2)

    assert [[len(image) for image in group] for group in groups] == [[10, 100], [100, 30], [30, 10]]
    # Padded: every row as long as the longest; bytes: each file and its 4-byte length.
    assert request_bytes(groups[0], "padded") == 200
    assert request_bytes(groups[0], "bytes") == 118


def test_an_unknown_form_is_refused():
    from bls_pipeline.devtools.bench.forms import request_bytes
    from bls_pipeline.errors import BenchError

    with pytest.raises(BenchError, match="unknown request form 'json'"):
        request_bytes([b"x"], "json")


def test_form_loads_put_the_two_forms_of_a_point_back_to_back():
    from bls_pipeline.devtools.bench.forms import form_loads

    loads = form_loads(
        "classifier", {"grpc": "h:8001", "http": "h:8000"}, protocols=("grpc", "http"), points=((8, 32), (32, 8))
    )

    assert [(load.images_per_request, load.protocol, load.form) for load in loads] == [
        (8, "grpc", "padded"),
        (8, "grpc", "bytes"),
        (8, "http", "padded"),
        (8, "http", "bytes"),
        (32, "grpc", "padded"),
        (32, "grpc", "bytes"),
        (32, "http", "padded"),
        (32, "http", "bytes"),
    ]
    assert {load.url for load in loads if load.protocol == "grpc"} == {"h:8001"} and {load.model for load in loads} == {
        "classifier"
    }


def test_varied_images_span_imagenets_sizes():
    from bls_pipeline.devtools.bench.images import varied_images

    images = varied_images()
    sizes = sorted(len(image.data) for image in images)

    assert len(images) == 8 and sizes[-1] > 5 * sizes[0]


def test_imagenet_sized_images_span_shapes_and_50_to_400_kb():
    from bls_pipeline.devtools.bench.images import imagenet_sized_images

    images = imagenet_sized_images()
    kilobytes = sorted(len(image.data) / 1000 for image in images)

    assert {(image.width > image.height, image.width == image.height) for image in images} == {
        (True, False),
        (False, False),
        (False, True),
    }
    assert 50 <= kilobytes[0] and kilobytes[-1] <= 400 and kilobytes[-1] > 4 * kilobytes[0]


def test_dmon_output_gives_the_sm_and_jpeg_utilization_of_its_last_sample():
    from bls_pipeline.devtools.bench.perf import parse_dmon_utilization

    output = (
        "# gpu     sm    mem    enc    dec    jpg    ofa \n"
        "# Idx      %      %      %      %      %      % \n"
        "    0     61     12      0      0      7      - \n"
    )

    assert parse_dmon_utilization(output) == {"gpu": 0.0, "sm": 61.0, "mem": 12.0, "enc": 0.0, "dec": 0.0, "jpg": 7.0}
    assert parse_dmon_utilization("No devices were found") == {}

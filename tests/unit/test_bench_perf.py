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


def test_an_empty_perf_csv_is_an_error():
    with pytest.raises(BenchError, match="no measurement"):
        parse_perf_csv(CSV.splitlines()[0] + "\n")


def _stats(executions, inferences, requests, queue_ms, compute_ms):
    return {"executions": executions, "inferences": inferences, "requests": requests,
            "queue_ns": int(queue_ms * 1e6), "compute_ns": int(compute_ms * 1e6)}


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
        "model": endpoint, "protocol": "grpc", "concurrency": concurrency, "images_per_s": images_per_s,
        "p50_ms": p50_ms, "p90_ms": p99_ms, "p99_ms": p99_ms, "server_queue_ms": 0.0, "server_compute_ms": 0.0,
        "gpu_util_percent": 50.0,
        "extra": {"endpoint": endpoint, "models": {"preprocessing": {"mean_batch": 32.0, "compute_ms": 9.0}}},
    }


def test_the_gpu_summary_takes_the_best_points_under_the_p99_limit_and_the_table_prints():
    from bls_pipeline.devtools.bench.gpu import format_gpu_table, summarize

    result = {
        "in_process": {
            "settings": {"num_threads": 8, "hw_decoder_load": 0.65},
            "preprocessing": {1: 1000.0, 128: 13000.0},
            "network": {1: 1500.0, 128: 18000.0},
            "inprocess": {1: 700.0, 128: 8000.0},
            "single_image_ms": 1.5,
        },
        "endpoints": [
            _point("bls_native", 1, 200.0, 6.0, p50_ms=4.4),
            _point("bls_native", 64, 6000.0, 90.0),
            _point("bls_native", 256, 7000.0, 300.0),  # over the p99 limit: not the best
            _point("ensemble_native", 64, 5000.0, 80.0),
        ],
    }
    result["summary"] = summary = summarize(result)
    assert summary["in_process_limit"] == 8000.0
    assert summary["bls_best"]["images_per_s"] == 6000.0
    assert summary["bls_over_in_process"] == 0.75
    assert summary["bls_over_ensemble"] == 1.2
    assert summary["bls_single_image_p50_ms"] == 4.4
    table = format_gpu_table(result)
    assert "inprocess" in table and "8000" in table and "bls_native" in table and "settings" not in table

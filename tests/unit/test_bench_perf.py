"""perf_analyzer output and Triton statistics, parsed (the GPU benchmark's server side)."""

from __future__ import annotations

import pytest

from bls_pipeline.devtools.bench.perf import parse_perf_csv, statistics_delta
from bls_pipeline.devtools.bench.run import BenchError

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

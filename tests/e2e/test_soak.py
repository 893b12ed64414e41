"""A short soak in CI: good and bad images, concurrent, against the session's server."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.e2e._support import hosting_of, start_server

pytestmark = pytest.mark.e2e


def test_a_short_soak_has_no_unexpected_outcome(triton_server, max_batch_size, tmp_path, capsys):
    from bls_pipeline.cli.soak import main

    report_path = tmp_path / "soak.json"
    code = main(
        [
            "--url",
            triton_server.url,
            "--server-pid",
            str(triton_server.process.pid),
            "--requests",
            "200",
            "--concurrency",
            "4",
            "--bad-fraction",
            "0.3",
            "--json-out",
            str(report_path),
            "--quiet",
        ]
    )

    report = json.loads(report_path.read_text())
    assert code == 0, capsys.readouterr().out
    assert report["unexpected"] == 0
    # The warm-up's peak (16 requests in flight, each a full batch of the largest photograph)
    # comes first, on top.
    assert report["peak_requests"] == 2 * 4 * 4
    assert report["peak_images"] == max_batch_size
    assert report["ok"] + sum(report["expected_errors"].values()) == 200 + report["peak_requests"]
    assert len(report["expected_errors"]) >= 5  # most bad kinds came up, each refused as expected
    assert {"start", "warm", "end"} <= set(report["memory"])
    # tritonserver and one stub per Python-backend model: three, or the classifier's alone
    # where Triton's own backends host the other two.
    stubs = 1 if hosting_of(triton_server.options.model_repository) == "native" else 3
    assert report["memory"]["end"]["processes"] == 1 + stubs
    # Each stub's shared-memory region, read apart: they add up to the /dev/shm figure.
    regions = report["memory"]["end"]["shm_by_process"]
    assert len(regions) == stubs and sum(regions.values()) == report["memory"]["end"]["shm_bytes"] > 0
    assert "UNEXPECTED" in capsys.readouterr().out


def test_requests_the_server_sheds_are_retried_and_counted_not_hidden(native_repository, tmp_path):
    from bls_pipeline.builder.repository import change_queue_policy
    from bls_pipeline.devtools.soak import SoakOptions, build_samples, run_soak

    # A queue of one request, eight in flight: the server sheds some, the client sends them again.
    repository = tmp_path / "model_repository"
    shutil.copytree(native_repository, repository)
    change_queue_policy(repository, max_queue_size=1)
    server = start_server(repository, tmp_path / "tritonserver.log")
    try:
        options = SoakOptions(url=server.url, requests=64, concurrency=8, bad_fraction=0.0, peak_requests=0)
        report = run_soak(options, build_samples())
    finally:
        server.stop()

    assert report.retried > 0
    assert report.ok == 64 and report.unexpected == 0


def test_the_in_process_soak_runs_the_repositorys_pipeline_and_network_and_watches_its_memory(
    native_repository, tmp_path, capsys
):
    from bls_pipeline.cli.soak import main

    report_path = tmp_path / "in-process.json"
    code = main(
        [
            "--in-process",
            str(native_repository),
            "--duration",
            "6",
            "--warmup-seconds",
            "2",
            "--sample-interval",
            "1",
            "--bad-fraction",
            "0.5",
            "--json-out",
            str(report_path),
            "--quiet",
        ]
    )

    report = json.loads(report_path.read_text())
    assert code == 0, capsys.readouterr().out
    # Batches of the soak's photographs through the real DALI pipeline and ONNX Runtime network;
    # those with the corrupt PNG failed in DALI (and the pipeline was rebuilt), none other did.
    assert report["requests"] >= 2 and report["images_per_s"] > 0 and report["unexpected"] == 0
    assert report["ok"] + sum(report["expected_errors"].values()) == report["requests"]
    assert {"start", "warm", "end"} <= set(report["memory"])
    assert report["memory"]["end"]["by_process"]["this process"] > 100_000  # KiB: DALI and the network loaded
    assert len(report["memory_trace"]) >= 3
    assert "RSS growth after warm-up" in capsys.readouterr().out


def test_the_in_process_soak_needs_a_duration(capsys):
    from bls_pipeline.cli.soak import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--in-process", "/nonexistent"])
    assert exit_info.value.code == 2
    assert "--in-process needs --duration" in capsys.readouterr().err

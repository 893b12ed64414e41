"""A short soak in CI: good and bad images, concurrent, against the session's server."""

from __future__ import annotations

import json

import pytest

from tests.e2e._support import hosting_of

pytestmark = pytest.mark.e2e


def test_a_short_soak_has_no_unexpected_outcome(triton_server, tmp_path, capsys):
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
    assert report["ok"] + sum(report["expected_errors"].values()) == 200
    assert len(report["expected_errors"]) >= 5  # most bad kinds came up, each refused as expected
    assert {"start", "warm", "end"} <= set(report["memory"])
    # tritonserver and one stub per Python-backend model: three, or the classifier's alone
    # where Triton's own backends host the other two.
    stubs = 1 if hosting_of(triton_server.options.model_repository) == "native" else 3
    assert report["memory"]["end"]["processes"] == 1 + stubs
    assert "UNEXPECTED" in capsys.readouterr().out

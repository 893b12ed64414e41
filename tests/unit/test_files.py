"""Specification of ``bls_pipeline.client_files``: collecting paths, results, the table.

Classifying through a real server (fan-out, retries, order of the streamed results) is
specified end to end in ``tests/e2e/test_cli.py``.
"""

from __future__ import annotations

import pytest

from bls_pipeline.client import ClientError, Prediction, single_image_reason
from bls_pipeline.client_files import FileResult, collect_files, format_table


def test_collect_files_searches_folders_recursively_by_case_insensitive_extension(tmp_path):
    for name in ["a.JPG", "sub/b.png", "sub/deeper/c.WebP", "sub/notes.txt", "d.tiff", "e.gif"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")

    found = collect_files([str(tmp_path), str(tmp_path / "**" / "*.png"), str(tmp_path / "sub" / "notes.txt")])

    relative = [p.relative_to(tmp_path).as_posix() for p in found]
    # Duplicates from the glob are dropped; a file named explicitly is taken whatever its name.
    assert relative == ["a.JPG", "d.tiff", "sub/b.png", "sub/deeper/c.WebP", "sub/notes.txt"]


CAT = Prediction(class_ids=[285, 281], scores=[0.75, 0.125], labels=["Egyptian cat", "tabby"])


def test_a_result_is_predictions_or_an_error_in_json():
    assert FileResult("a.jpg", [CAT]).to_json() == {
        "file": "a.jpg",
        "predictions": [
            {"class_id": 285, "label": "Egyptian cat", "probability": 0.75},
            {"class_id": 281, "label": "tabby", "probability": 0.125},
        ],
    }
    assert FileResult("b.png", error="not an image").to_json() == {"file": "b.png", "error": "not an image"}


def test_the_table_puts_top_1_on_the_file_row_runners_up_below_and_errors_inline():
    long_path = "x/" * 40 + "c.jpg"
    table = format_table(
        [FileResult("a.jpg", [CAT]), FileResult("b.png", error="not an image"), FileResult(long_path, [CAT])]
    )

    lines = table.splitlines()
    assert lines[0].split() == ["FILE", "LABEL", "PROBABILITY"]
    assert lines[1].split() == ["a.jpg", "Egyptian", "cat", "0.7500"]
    assert lines[2].split() == ["tabby", "0.1250"] and lines[2].startswith(" ")
    assert lines[3].split() == ["b.png", "error:", "not", "an", "image"]
    assert lines[4].startswith("...") and lines[4].split()[0].endswith("c.jpg")
    assert len(lines[4].split()[0]) == 60


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (
            "image 0: not an image (unknown format, first bytes 74 68 69 73)",
            "not an image (unknown format, first bytes 74 68 69 73)",
        ),
        ("[400] image 0: empty image", "empty image"),
        ("[StatusCode.INVALID_ARGUMENT] image 0: truncated PNG (no IEND chunk)", "truncated PNG (no IEND chunk)"),
        ("preprocessing: Stub process is not healthy.", "preprocessing: Stub process is not healthy."),
    ],
)
def test_the_reason_for_one_refused_image_drops_status_and_index(message, reason):
    assert single_image_reason(ClientError(message)) == reason

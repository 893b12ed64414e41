"""The command-line tools as a user runs them: subprocesses from the repository root.

Every tool: ``--help`` documents every flag, a user error is one ``error:`` line on stderr
with a non-zero exit code and never a traceback. ``tools/classify.py`` runs against the
session's real server.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bls_pipeline.cli.common import ExitCode
from bls_pipeline.server.launcher import free_port
from tests.conftest import PHOTOS

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLES = REPO_ROOT / "samples"
TOOLS = ["build_repo", "build_backends", "serve", "classify", "capacity", "overload"]
SAMPLE_FILES = {"chelsea.jpg": "chelsea", "coffee.jpg": "coffee", "rocket.png": "rocket"}
EXPECTED_LABELS = {"chelsea": "Egyptian cat", "coffee": "espresso", "rocket": "missile"}


def run_tool(tool: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, f"tools/{tool}.py", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def declared_flags(tool: str) -> dict[str, bool]:
    """Every ``--flag`` of the tool's ``add_argument`` calls, and whether the call has ``help=``.

    Read from the source so that the test needs no access to the parser object; build_repo's
    flags are the build spec's knobs.
    """
    tree = ast.parse((REPO_ROOT / "bls_pipeline" / "cli" / f"{tool}.py").read_text())
    flags: dict[str, bool] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument":
            has_help = any(k.arg == "help" for k in node.keywords)
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("--"):
                    flags[arg.value] = has_help
    if tool == "build_repo":
        # Its flags are generated from the build spec's knobs, each with its help.
        from bls_pipeline.builder.spec import KNOBS, flag_of

        flags.update({flag_of(name): bool(knob.metadata["help"]) for name, knob in KNOBS.items()})
    return flags


def mentions(text: str, flag: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text) is not None


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error:" in line]


def assert_one_line_error(result: subprocess.CompletedProcess[str], tool: str) -> str:
    """The single ``<tool>: error: ...`` line of ``result``; no traceback anywhere."""
    assert "Traceback" not in result.stderr + result.stdout
    (line,) = error_lines(result.stderr)
    assert line.startswith(f"{tool}: error: "), line
    return line


# --- every tool ---------------------------------------------------------------------------


@pytest.mark.parametrize("tool", TOOLS)
def test_help_exits_0_and_documents_every_flag(tool):
    result = run_tool(tool, "--help")

    flags = declared_flags(tool)
    assert result.returncode == 0, result.stderr
    assert len(flags) >= 3
    assert [flag for flag in flags if not mentions(result.stdout, flag)] == []
    assert [flag for flag, has_help in flags.items() if not has_help] == []


@pytest.mark.parametrize("tool", TOOLS)
def test_unknown_flag_exits_2_with_one_error_line(tool):
    # Required arguments are given, so that the flag is what argparse complains about.
    required = {"classify": ["samples/"], "capacity": ["--images-per-s", "1", "--p99-ms", "100"]}
    result = run_tool(tool, "--no-such-flag", *required.get(tool, []))

    assert result.returncode == 2
    line = assert_one_line_error(result, tool)
    assert "--no-such-flag" in line


@pytest.mark.parametrize("tool", [*TOOLS, "soak", "bench", "demo", "build_backends"])
def test_help_documents_the_exit_codes_every_tool_shares(tool):
    result = run_tool(tool, "--help")

    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    for code in ExitCode:
        assert re.search(rf"(?<!\d){code.value} [a-z]", text), f"{tool} --help does not explain exit code {code.value}"


def test_classify_help_shows_an_example():
    result = run_tool("classify", "--help")

    assert "examples:" in result.stdout
    assert re.search(r"^\s+classify \S+", result.stdout, re.MULTILINE)


# --- build_repo -------------------------------------------------------------------------


def test_build_repo_refuses_a_non_empty_output_without_force(tmp_path):
    output = tmp_path / "repo"
    output.mkdir()
    (output / "keep.txt").write_text("precious")

    result = run_tool("build_repo", "--output", str(output))

    assert result.returncode == ExitCode.INPUT
    line = assert_one_line_error(result, "build_repo")
    assert str(output) in line and "--force" in line
    assert (output / "keep.txt").read_text() == "precious"


def test_build_repo_names_a_missing_checkpoint(tmp_path):
    missing = tmp_path / "missing.pth"

    result = run_tool("build_repo", "--checkpoint", str(missing), "--output", str(tmp_path / "repo"))

    assert result.returncode == ExitCode.INPUT
    assert str(missing) in assert_one_line_error(result, "build_repo")


# --- classify: without a server ------------------------------------------------------------


def test_classify_reports_an_unreachable_server_in_one_line():
    url = f"127.0.0.1:{free_port()}"

    result = run_tool("classify", "--url", url, "samples/chelsea.jpg", timeout=60)

    assert result.returncode == ExitCode.SERVER
    assert url in assert_one_line_error(result, "classify")
    assert result.stdout == ""


@pytest.mark.parametrize(
    "make_argument, message",
    [
        (lambda tmp: str(tmp / "nope.jpg"), "does not exist"),
        (lambda tmp: str(tmp), "no image files found"),
        (lambda tmp: str(tmp / "*.jpg"), "no file matches"),
    ],
    ids=["missing-path", "folder-without-images", "glob-without-matches"],
)
def test_classify_path_errors_exit_with_the_input_code_before_contacting_a_server(tmp_path, make_argument, message):
    (tmp_path / "notes.txt").write_text("not an image")

    # A server is never asked: the URL is unreachable and the error is about the path.
    result = run_tool("classify", "--url", f"127.0.0.1:{free_port()}", make_argument(tmp_path), timeout=60)

    assert result.returncode == ExitCode.INPUT
    assert message in assert_one_line_error(result, "classify")


# --- classify: against the session's server -----------------------------------------------


def test_classify_prints_a_table_of_the_sample_photos(triton_server):
    result = run_tool("classify", "--url", triton_server.url, "samples/")

    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["FILE", "LABEL", "PROBABILITY"]
    top1 = {row.split()[0]: row for row in rows if not row.startswith(" ")}
    assert sorted(top1) == [f"samples/{name}" for name in sorted(SAMPLE_FILES)]
    for file, photo in SAMPLE_FILES.items():
        assert EXPECTED_LABELS[photo] in top1[f"samples/{file}"]
    # Top-5 by default: four indented runner-up rows under each file.
    assert len(rows) == 3 * 5


@pytest.mark.parametrize(
    "extra", [[], ["--batch-size", "1", "--concurrency", "3"]], ids=["one-batch", "batches-of-one"]
)
def test_classify_json_has_the_class_ids_of_the_sample_photos(triton_server, extra):
    result = run_tool("classify", "--url", triton_server.url, "--json", "--top-k", "3", *extra, "samples/")

    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    by_file = {Path(entry["file"]).name: entry for entry in document}
    assert sorted(by_file) == sorted(SAMPLE_FILES)
    for file, photo in SAMPLE_FILES.items():
        predictions = by_file[file]["predictions"]
        assert len(predictions) == 3
        assert predictions[0]["class_id"] == PHOTOS[photo]
        assert predictions[0]["label"] == EXPECTED_LABELS[photo]
        assert [p["probability"] for p in predictions] == sorted((p["probability"] for p in predictions), reverse=True)


def test_a_non_image_fails_its_own_row_and_the_others_still_print(triton_server, tmp_path):
    for file in SAMPLE_FILES:
        shutil.copy(SAMPLES / file, tmp_path / file)
    (tmp_path / "broken.png").write_text("this is text, not a PNG")

    result = run_tool("classify", "--url", triton_server.url, "--json", str(tmp_path))

    assert result.returncode == 1
    assert "1 of 4 files failed" in result.stderr
    assert "Traceback" not in result.stderr
    by_file = {Path(entry["file"]).name: entry for entry in json.loads(result.stdout)}
    assert "not an image" in by_file["broken.png"]["error"]
    assert {file: by_file[file]["predictions"][0]["class_id"] for file in SAMPLE_FILES} == {
        file: PHOTOS[photo] for file, photo in SAMPLE_FILES.items()
    }


def test_a_file_over_max_bytes_is_reported_without_being_sent(triton_server):
    size = (SAMPLES / "rocket.png").stat().st_size

    result = run_tool("classify", "--url", triton_server.url, "--max-bytes", str(size - 1), "--top-k", "1", "samples/")

    assert result.returncode == 1
    rows = {row.split()[0]: row for row in result.stdout.splitlines()[1:]}
    assert "larger than --max-bytes" in rows["samples/rocket.png"]
    assert EXPECTED_LABELS["coffee"] in rows["samples/coffee.jpg"]
    assert "1 of 3 files failed" in result.stderr


def jsonl_folder(tmp_path: Path, copies: int) -> list[str]:
    """``copies`` of each sample photo, and one broken file among them; their sorted names."""
    for index in range(copies):
        for file in SAMPLE_FILES:
            shutil.copy(SAMPLES / file, tmp_path / f"{index:03d}-{file}")
    (tmp_path / "001-broken.png").write_text("this is text, not a PNG")
    return sorted(path.name for path in tmp_path.iterdir())


def test_jsonl_has_one_object_per_file_in_order_with_errors_in_place(triton_server, tmp_path):
    names = jsonl_folder(tmp_path, copies=3)

    result = run_tool(
        "classify", "--url", triton_server.url, "--jsonl", "--top-k", "2", "--batch-size", "2", str(tmp_path)
    )

    assert result.returncode == ExitCode.FAILED
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(line["file"]).name for line in lines] == names
    for name, line in zip(names, lines):
        if name == "001-broken.png":
            assert "not an image" in line["error"] and "predictions" not in line
        else:
            photo = SAMPLE_FILES[name[4:]]
            assert [p["class_id"] for p in line["predictions"]][0] == PHOTOS[photo]
            assert len(line["predictions"]) == 2
    assert f"1 of {len(names)} files failed" in result.stderr


def test_jsonl_lines_arrive_while_later_files_are_still_being_classified(triton_server, tmp_path):
    names = jsonl_folder(tmp_path, copies=30)
    command = [
        sys.executable,
        "tools/classify.py",
        "--url",
        triton_server.url,
        "--jsonl",
        "--batch-size",
        "1",
        "--concurrency",
        "1",
        str(tmp_path),
    ]

    with subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        first = process.stdout.readline()
        # 90 more one-image requests, one at a time, are still to come when the first line is out.
        still_running = process.poll() is None
        rest, errors = process.communicate(timeout=300)

    assert still_running, "the first JSON line only came when the whole run was over"
    assert Path(json.loads(first)["file"]).name == names[0]
    assert len(rest.splitlines()) == len(names) - 1
    assert "Traceback" not in errors


def test_no_progress_bar_frames_reach_a_redirected_stderr(triton_server):
    result = run_tool("classify", "--url", triton_server.url, "--json", "samples/")

    assert result.returncode == 0
    assert result.stderr == ""

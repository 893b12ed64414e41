"""Specification of ``bls_pipeline.cli.common``: one exit code per kind of failure, help, progress bars."""

from __future__ import annotations

import argparse
import fcntl
import io
import os
import select
import struct
import termios
import time

import pytest

from bls_pipeline.cli.common import ExitCode, HelpFormatter, exit_code_for, progress_bar, report_error
from bls_pipeline.client import ClientError
from bls_pipeline.errors import CheckpointError, ConfigError, ServerError


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ServerError("tritonserver exited"), ExitCode.SERVER),
        (ClientError("cannot reach a Triton server at 127.0.0.1:1"), ExitCode.SERVER),
        (CheckpointError("looks like torchvision"), ExitCode.INPUT),
        (ConfigError("exists and is not empty: use --force"), ExitCode.INPUT),
        (FileNotFoundError("missing.pth"), ExitCode.INPUT),
        (KeyboardInterrupt(), ExitCode.INTERRUPTED),
    ],
    ids=["server", "client", "checkpoint", "config", "os", "ctrl-c"],
)
def test_the_exit_code_follows_the_kind_of_failure(error, code):
    assert exit_code_for(error) == code


def test_exit_codes_are_distinct_and_usage_is_argparse_s():
    assert len({code.value for code in ExitCode}) == len(ExitCode)
    assert ExitCode.USAGE == 2 and ExitCode.OK == 0


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        ({"type": int, "default": 8, "help": "requests in flight"}, "requests in flight (default: 8)"),
        (
            {"type": int, "default": None, "help": "threads (default: 2 on cpu, 8 on gpu)"},
            "threads (default: 2 on cpu, 8 on gpu)",
        ),
        ({"default": (), "help": "GPU ids (default: each visible GPU)"}, "GPU ids (default: each visible GPU)"),
        ({"action": "append", "default": [], "help": "a value per argument"}, "a value per argument"),
        ({"default": "/x", "help": "folder; default: ./x when it exists"}, "folder; default: ./x when it exists"),
    ],
    ids=["plain", "none", "stated", "empty-list", "stated-other-default"],
)
def test_help_shows_each_default_once_and_no_empty_ones(kwargs, shown):
    parser = argparse.ArgumentParser(prog="tool", formatter_class=lambda prog: HelpFormatter(prog, width=200))
    parser.add_argument("--knob", **kwargs)
    (line,) = [line for line in parser.format_help().splitlines() if "--knob" in line and "usage" not in line]
    assert line.split(None, 2)[-1] == shown


def test_report_error_prints_one_line_and_returns_the_code(capsys):
    assert report_error("classify", ClientError("model 'classifier' is not ready")) == 4
    assert report_error("soak", ValueError("requests must be at least 1"), ExitCode.USAGE) == 2
    assert capsys.readouterr().err == (
        "classify: error: model 'classifier' is not ready\nsoak: error: requests must be at least 1\n"
    )


def test_the_progress_bar_is_off_when_the_stream_is_not_a_terminal(tmp_path):
    read_end, write_end = os.pipe()
    with open(write_end, "w") as pipe, open(tmp_path / "log", "w") as file:
        for stream in (io.StringIO(), pipe, file):
            with progress_bar(10, "file", stream=stream) as bar:
                assert bar.disable
                bar.update(10)
    with open(read_end) as pipe:
        assert pipe.read() == ""
    assert (tmp_path / "log").read_text() == ""


def test_the_progress_bar_draws_on_a_terminal():
    leader, follower = os.openpty()
    # A pseudo-terminal starts 0 columns wide, where tqdm draws nothing; a real one has a size.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    with open(follower, "w") as terminal:
        with progress_bar(10, "file", stream=terminal) as bar:
            assert not bar.disable
            bar.update(4)
            bar.refresh()
            terminal.flush()
            # The first draw (0/10) may arrive alone: read until the update shows or 5 s pass.
            drawn, deadline = "", time.monotonic() + 5
            while "4/10" not in drawn and time.monotonic() < deadline:
                readable, _, _ = select.select([leader], [], [], max(0.0, deadline - time.monotonic()))
                if readable:
                    drawn += os.read(leader, 4096).decode(errors="replace")
    os.close(leader)
    assert "4/10" in drawn

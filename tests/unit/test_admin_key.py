"""Specification of the admin key: where it is read from, what it may hold, the flags it makes.

The server's behaviour with those flags is in tests/e2e/test_admin_apis.py; the container's
command and manifests in tests/unit/test_deploy.py.
"""

from __future__ import annotations

import pytest

from bls_pipeline.server.admin import (
    ADMIN_HEADER,
    KEY_ENV,
    KEY_FILE_ENV,
    AdminKeyError,
    admin_key,
    container_command,
    restriction_args,
)

KEY = "0123456789abcdef0123"


def test_the_key_file_comes_before_the_variable(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(f"{KEY}\n")

    assert admin_key({KEY_FILE_ENV: str(key_file), KEY_ENV: "other-key-0123456789"}) == (KEY, str(key_file))
    assert admin_key({KEY_ENV: KEY}) == (KEY, KEY_ENV)


def test_without_a_key_a_random_one_closes_the_apis_to_everyone():
    first, second = admin_key({}), admin_key({})

    assert first[1] == second[1] == "random" and first[0] != second[0] and len(first[0]) == 64


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({KEY_ENV: "short"}, "has 5 characters, needs at least 16"),
        ({KEY_ENV: "has=an=equals=sign=0123"}, "may hold only letters, digits"),
        ({KEY_ENV: "has:a:colon:0123456789"}, "may hold only letters, digits"),
        ({KEY_FILE_ENV: "/nonexistent/key"}, "cannot read the admin key file /nonexistent/key"),
    ],
)
def test_an_unusable_key_is_refused_naming_where_it_came_from(environ, message):
    with pytest.raises(AdminKeyError, match=message):
        admin_key(environ)


def test_the_flags_close_shared_memory_trace_logging_and_the_model_repository_on_both_protocols():
    closed = f"shared-memory,trace,logging,model-repository:{ADMIN_HEADER}={KEY}"

    assert restriction_args(KEY) == [f"--http-restricted-api={closed}", f"--grpc-restricted-protocol={closed}"]


def test_the_container_command_adds_the_flags_and_refuses_a_command_that_restricts_itself():
    command, source = container_command(["tritonserver", "--model-repository=/models"], {KEY_ENV: KEY})

    assert command == ["tritonserver", "--model-repository=/models", *restriction_args(KEY)] and source == KEY_ENV
    with pytest.raises(AdminKeyError, match="restricts APIs itself"):
        container_command(["tritonserver", "--http-restricted-api=inference:k=v"], {KEY_ENV: KEY})
    with pytest.raises(AdminKeyError, match="usage"):
        container_command([], {KEY_ENV: KEY})


def test_the_entrypoint_replaces_itself_with_the_command_and_its_flags():
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "bls_pipeline.server.admin", "echo", "--model-repository=/models"],
        env={KEY_ENV: KEY, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    *said, echoed = result.stdout.splitlines()
    assert said == [
        f"admin: shared-memory, trace, logging, model-repository APIs need the {ADMIN_HEADER} header (key from {KEY_ENV})"
    ]
    assert echoed.split() == ["--model-repository=/models", *restriction_args(KEY)]


def test_the_entrypoint_refuses_a_bad_key_in_one_line_without_starting_anything():
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "bls_pipeline.server.admin", "echo", "started"],
        env={KEY_ENV: "short", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"admin: error: the admin key from {KEY_ENV} has 5 characters, needs at least 16\n"


def test_the_entrypoint_starts_the_server_with_the_allocators_defaults_unless_set():
    import subprocess
    import sys

    from bls_pipeline.server.allocator import MALLOC_ARENA_MAX_ENV, SERVER_MALLOC_ARENAS

    def arenas(extra: dict[str, str]) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "bls_pipeline.server.admin", "sh", "-c", f"echo ${MALLOC_ARENA_MAX_ENV}"],
            env={KEY_ENV: KEY, "PATH": "/usr/bin:/bin", **extra},
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.splitlines()[-1]

    assert arenas({}) == str(SERVER_MALLOC_ARENAS)
    assert arenas({MALLOC_ARENA_MAX_ENV: "16"}) == "16"  # the deployment's own value wins


def test_allocator_defaults_fill_in_an_unset_or_empty_value_only():
    from bls_pipeline.server.allocator import MALLOC_ARENA_MAX_ENV, with_allocator_defaults

    assert with_allocator_defaults({"A": "1"}) == {"A": "1", MALLOC_ARENA_MAX_ENV: "2"}
    assert with_allocator_defaults({MALLOC_ARENA_MAX_ENV: ""})[MALLOC_ARENA_MAX_ENV] == "2"
    assert with_allocator_defaults({MALLOC_ARENA_MAX_ENV: "8"})[MALLOC_ARENA_MAX_ENV] == "8"

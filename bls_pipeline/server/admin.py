"""Triton's admin APIs, closed to inference clients: they answer only requests with a key header.

Shared-memory registration, trace and log settings, and the model-repository API (load and
unload, and load with uploaded files, which runs their code) change the server for every
client. Triton restricts an API to requests that carry a header with a given value
(``--http-restricted-api``, ``--grpc-restricted-protocol``); :func:`restriction_args` writes
both flags for a key. Inference, health, metadata, model configs, statistics and the metrics
port stay open.

The key is read from the file named by ``BLS_ADMIN_KEY_FILE`` (a mounted Kubernetes Secret)
or from ``BLS_ADMIN_KEY``; without either, a random key that nobody knows closes the APIs to
everyone. The container starts ``tritonserver`` through this module, which adds the flags::

    python3 -m bls_pipeline.server.admin tritonserver --model-repository=/models ...

and the local launcher (``tools/serve.py``) adds the same flags. Calling a closed API over
HTTP, and over gRPC (where the header is ``triton-grpc-protocol-bls-admin-key``)::

    curl -H "bls-admin-key: $(cat admin.key)" -X POST localhost:8000/v2/logging -d '{"log_verbose_level": 1}'
    tritonclient.grpc.InferenceServerClient("localhost:8001").unload_model(
        "preprocessing", headers={GRPC_ADMIN_HEADER: key})

This module imports the standard library only: the container runs it before the server.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from bls_pipeline.server.allocator import with_allocator_defaults

# The header that carries the key over HTTP (lower case: gRPC metadata keys must be). Over
# gRPC, Triton 2.51 expects it with a prefix (its refusal says so): GRPC_ADMIN_HEADER.
ADMIN_HEADER = "bls-admin-key"
GRPC_ADMIN_HEADER = f"triton-grpc-protocol-{ADMIN_HEADER}"
KEY_FILE_ENV = "BLS_ADMIN_KEY_FILE"
KEY_ENV = "BLS_ADMIN_KEY"
# Triton's API names (tritonserver --help lists them); the ones not named here stay open:
# inference, health, metadata, model-config, statistics.
RESTRICTED_APIS = ("shared-memory", "trace", "logging", "model-repository")
MIN_KEY_LENGTH = 16
# Triton splits its flag at ':' and '=': a key holds none of them (openssl rand -hex 32 fits).
_KEY = re.compile(r"[A-Za-z0-9_.~+/-]+")


class AdminKeyError(ValueError):
    """The admin key that was given cannot be used."""


def check_key(key: str, source: str) -> str:
    """``key`` if it is long enough and Triton's flag can carry it; :class:`AdminKeyError` names ``source``."""
    if len(key) < MIN_KEY_LENGTH:
        raise AdminKeyError(f"the admin key from {source} has {len(key)} characters, needs at least {MIN_KEY_LENGTH}")
    if not _KEY.fullmatch(key):
        raise AdminKeyError(
            f"the admin key from {source} may hold only letters, digits and _.~+/- (openssl rand -hex 32)"
        )
    return key


def admin_key(environ: Mapping[str, str] = os.environ) -> tuple[str, str]:
    """``(key, where it came from)``: ``BLS_ADMIN_KEY_FILE``'s file, else ``BLS_ADMIN_KEY``, else a
    random key (the closed APIs then answer nobody). Raises :class:`AdminKeyError`."""
    path = environ.get(KEY_FILE_ENV)
    if path:
        try:
            key = Path(path).read_text().strip()
        except OSError as exc:
            raise AdminKeyError(
                f"cannot read the admin key file {path} ({KEY_FILE_ENV}): {exc.strerror or exc}"
            ) from None
        return check_key(key, f"{KEY_FILE_ENV}={path}"), path
    if environ.get(KEY_ENV):
        return check_key(environ[KEY_ENV].strip(), KEY_ENV), KEY_ENV
    return secrets.token_hex(32), "random"


def restriction_args(key: str) -> list[str]:
    """The ``tritonserver`` flags that close :data:`RESTRICTED_APIS` behind ``ADMIN_HEADER: key``."""
    restricted = f"{','.join(RESTRICTED_APIS)}:{ADMIN_HEADER}={key}"
    return [f"--http-restricted-api={restricted}", f"--grpc-restricted-protocol={restricted}"]


def container_command(argv: Sequence[str], environ: Mapping[str, str] = os.environ) -> tuple[list[str], str]:
    """The server command of the container: ``argv`` (``tritonserver`` and its flags) with the
    restriction flags added, and where the key came from."""
    if not argv:
        raise AdminKeyError("usage: python3 -m bls_pipeline.server.admin tritonserver [flags...]")
    if any(arg.startswith(("--http-restricted-api", "--grpc-restricted-protocol")) for arg in argv):
        raise AdminKeyError("the command restricts APIs itself: leave that to the admin key (" + KEY_FILE_ENV + ")")
    key, source = admin_key(environ)
    return [*argv, *restriction_args(key)], source


def main(argv: Sequence[str] | None = None) -> int:
    """Replace this process with ``tritonserver`` started with its admin APIs closed."""
    try:
        command, source = container_command(sys.argv[1:] if argv is None else argv)
    except AdminKeyError as exc:
        print(f"admin: error: {exc}", file=sys.stderr)
        return 2
    if source == "random":
        print(
            f"admin: no {KEY_FILE_ENV} or {KEY_ENV}: shared-memory, trace, logging and model-repository "
            "APIs are closed to every client",
            file=sys.stderr,
            flush=True,
        )
    else:
        print(
            f"admin: {', '.join(RESTRICTED_APIS)} APIs need the {ADMIN_HEADER} header (key from {source})", flush=True
        )
    # The allocator's defaults (bls_pipeline.server.allocator) as the local launcher sets them.
    os.execvpe(command[0], command, with_allocator_defaults(os.environ))
    return 0  # not reached: execvpe replaces the process


if __name__ == "__main__":
    raise SystemExit(main())

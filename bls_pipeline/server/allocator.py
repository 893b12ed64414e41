"""glibc's allocator in ``tritonserver``: a bounded number of malloc arenas.

glibc gives a thread that finds the heap busy an arena of its own, up to 8 per core, and
keeps the memory its threads free for reuse in that arena. ``tritonserver`` runs DALI's worker
threads (8 per DALI instance on a GPU build), the frontends' and the backends' threads; on a
host of many cores every one of them ends up with an arena, and freed buffers of changing
sizes (images, batches) stay resident in each. Measured with the CPU soak
(``tools/soak.py``, 8 DALI threads per instance, 16 images per request, five soaks of seven minutes,
2 cores; ``docs/measurements/2026-12-02-cpu-soak.md``): with glibc's default (16 arenas here) and with 128
allowed (as on a 16-core host), ``tritonserver``'s own memory rose from 1.6-1.7 GiB to 2.2-2.8
GiB; with 2 it stayed between 1.5 and 1.9 GiB, at the same throughput (54-62 images/s). On an
H200 (``docs/measurements/2026-12-02-h200-arenas-soak.md``) the GPU soak that grew it from 1.6 to
2.6 GiB in ten minutes with glibc's arenas held it within 770-856 MiB with 2, and the served
throughput was the same with 2 and with 128 (0.99-1.00x).

The launcher (:func:`~bls_pipeline.server.staging.server_environment`) and the container's
entry point (:mod:`bls_pipeline.server.admin`) start the server with ``MALLOC_ARENA_MAX`` set
to :data:`SERVER_MALLOC_ARENAS` unless the environment sets it already (yours wins). The stubs
inherit it.

This module imports the standard library only: the container runs it before the server.
"""

from __future__ import annotations

from collections.abc import Mapping

MALLOC_ARENA_MAX_ENV = "MALLOC_ARENA_MAX"
SERVER_MALLOC_ARENAS = 2


def with_allocator_defaults(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with ``MALLOC_ARENA_MAX`` set to :data:`SERVER_MALLOC_ARENAS` where it is not set."""
    env = dict(environ)
    if not env.get(MALLOC_ARENA_MAX_ENV):
        env[MALLOC_ARENA_MAX_ENV] = str(SERVER_MALLOC_ARENAS)
    return env

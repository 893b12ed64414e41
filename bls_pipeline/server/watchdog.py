"""The stub watchdog: a thread that reloads every model whose Python-backend stub died.

tritonserver 2.51 does not restart a Python-backend stub that died (killed, out of memory):
the model still reports ready and every request to it fails after a second with "Stub
process '<model>_0_0' is not healthy." The watchdog compares the server's live stubs every
interval and reloads (unload, then load; explicit model control) each model whose stub is
gone; the endpoint recovers in about two seconds without a server restart.

Example::

    watchdog = StubWatchdog(1.0, server.stubs, alive, server.reload_model, reloaded, log_path)
    watchdog.start()
    ...
    watchdog.stop()
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from bls_pipeline.errors import ServerError
from bls_pipeline.server.processes import StubProcess, models_with_dead_stubs

LOGGER = logging.getLogger(__name__)


class StubWatchdog:
    """Reloads, from a daemon thread, every model whose stub died, until :meth:`stop`."""

    def __init__(
        self,
        interval_s: float,
        stubs: Callable[[], list[StubProcess]],
        alive: Callable[[], bool],
        reload_model: Callable[[str], None],
        reloaded_models: list[str],
        log_path: Path | None,
    ) -> None:
        self.interval_s = interval_s
        self._stubs = stubs
        self._alive = alive
        self._reload_model = reload_model
        # The models reloaded, in order (the caller's list: it outlives the watchdog).
        self.reloaded_models = reloaded_models
        self._log_path = log_path
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start watching in a daemon thread."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="stub-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching; waits for a reload in progress (unless called from the watchdog itself)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        self._thread = None

    def _watch(self) -> None:
        known = self._stubs()
        while not self._stop.wait(self.interval_s):
            if not self._alive():
                return
            for model in sorted(models_with_dead_stubs(known, self._stubs())):
                LOGGER.warning("the stub process of model %r died: reloading the model", model)
                try:
                    self._reload_model(model)
                except ServerError as exc:
                    LOGGER.error("%s; log %s", exc, self._log_path)
                    continue
                self.reloaded_models.append(model)
                LOGGER.warning("model %r reloaded", model)
            known = self._stubs()

"""Reading a server's log: its last lines, and its error lines, for the messages of a failed start.

Example::

    print(log_errors(server.log_path), log_tail(server.log_path), sep="\n")
"""

from __future__ import annotations

import re
from pathlib import Path

LOG_TAIL_LINES = 25
# glog error lines ("E1125 08:52:25.111826 ...") and the server's last words ("error: creating server: ...").
_LOG_ERROR = re.compile(r"E\d{4} |error: |\[libprotobuf ERROR")


def log_errors(log_path: Path | None, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` error lines of the server log.

    The reason a model failed to load is logged early; the tail is then tables of options.
    """
    if log_path is None or not log_path.is_file():
        return "(no log)"
    errors = [line for line in log_path.read_text(errors="replace").splitlines() if _LOG_ERROR.match(line)]
    return "\n".join(errors[-lines:]) or "(none logged)"


def log_tail(log_path: Path | None, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of the server log."""
    if log_path is None or not log_path.is_file():
        return "(no log)"
    return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])

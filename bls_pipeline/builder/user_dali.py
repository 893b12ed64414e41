"""A DALI model the user already serves: ``1/dali.py`` with ``@autoserialize``, or ``1/model.dali``.

:func:`load_user_pipeline` imports ``dali.py`` (this runs the user's code, as Triton's DALI
backend does when it autoserializes it), finds the one ``@autoserialize`` pipeline, builds it
with its image decoders on the repository's device and serializes it; it also reads the
pipeline's input names and batch size, for a DALI model without a ``config.pbtxt``. A
mistake in the user's code is reported in one line naming the file, the line and the
undefined name, instead of DALI's traceback: the tutorial's ``inference_pipe`` as printed
binds ``jpeg`` and then decodes ``jpegs``.

Example::

    pipeline = load_user_pipeline(repo / "preprocessing" / "1", decoder_device="cpu")
    pipeline.input_names, pipeline.max_batch_size     # ("DALI_INPUT",), 32
    (out / "preprocessing" / "1" / "model.dali").write_bytes(pipeline.serialized)
"""

from __future__ import annotations

import ast
import difflib
import inspect
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bls_pipeline.builder.user_pipeline import decoders_on, import_user_file, operators
from bls_pipeline.errors import ConfigError
from bls_pipeline.layout import DALI_FILE, SERIALIZED_FILE


@dataclass(frozen=True)
class UserPipeline:
    """A user's DALI model, with its decoders on ``decoder_device``.

    ``serialized`` is its graph, or ``None`` where it cannot be serialized here (a GPU
    pipeline on a machine without CUDA: ``unserializable`` says why). ``unchanged``: the graph
    is the user's as written (a ``model.dali``, or a ``dali.py`` whose decoders already ran on
    ``decoder_device``), so that the copy needs no ``model.dali`` of ours.
    """

    source: Path
    serialized: bytes | None
    decoder_device: str
    input_names: tuple[str, ...]
    output_name: str
    max_batch_size: int
    unchanged: bool
    unserializable: str = ""


def load_user_pipeline(version_dir: Path, *, decoder_device: str) -> UserPipeline:
    """The pipeline of a DALI model's version folder: ``model.dali`` as it is, else ``dali.py``."""
    serialized_file = version_dir / SERIALIZED_FILE
    if serialized_file.is_file():
        return UserPipeline(serialized_file, serialized_file.read_bytes(), decoder_device, (), "", 0, unchanged=True)
    dali_file = version_dir / DALI_FILE
    if not dali_file.is_file():
        raise ConfigError(f"{version_dir}: a DALI model needs {SERIALIZED_FILE} or {DALI_FILE}")
    function = _autoserialized_function(dali_file)
    pipe, asked = _build(function, dali_file, decoder_device)
    outputs = list(pipe._graph_out)
    if len(outputs) != 1:
        raise ConfigError(f"{dali_file}: {function.__name__} returns {len(outputs)} outputs; the classifier takes one")
    inputs = sorted(
        {operator._name for operator in operators(outputs[0]) if operator._op.schema.Name() == "ExternalSource"}
    )
    try:
        serialized, why = pipe.serialize(), ""
    except RuntimeError as exc:
        serialized, why = None, f"DALI cannot build it here: {str(exc).strip().splitlines()[0]}"
    return UserPipeline(
        dali_file,
        serialized,
        decoder_device,
        tuple(inputs),
        outputs[0].name,
        int(pipe.max_batch_size),
        unchanged=all(device == decoder_device for device in asked),
        unserializable=why,
    )


def _autoserialized_function(path: Path) -> Any:
    """Import ``path`` (runs its code) and return its one ``@autoserialize`` pipeline function."""
    try:
        module = import_user_file(path, "adopted_dali")
    except SyntaxError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: {exc.msg}") from None
    except Exception as exc:  # the user's code may raise anything: one line, where it happened
        raise ConfigError(user_code_error(path, exc)) from None
    found = [
        obj for _, obj in inspect.getmembers(module, inspect.isfunction) if getattr(obj, "_is_autoserialize", False)
    ]
    if len(found) != 1:
        raise ConfigError(
            f"{path}: Triton's DALI backend serializes the one function marked @autoserialize; "
            f"found {len(found)}{': ' + ', '.join(f.__name__ for f in found) if found else ''}"
        )
    return found[0]


def _build(function: Any, path: Path, decoder_device: str) -> tuple[Any, list[str]]:
    """The user's pipeline as the DALI backend calls it (its own defaults), decoders on ``decoder_device``;
    and the decoder devices the code asked for."""
    # A CPU pipeline must not ask for a GPU (the tutorial's pipeline_def says device_id=0).
    overrides = {"device_id": None} if decoder_device == "cpu" else {}
    try:
        with decoders_on(decoder_device) as asked:
            return function(**overrides), asked
    except Exception as exc:  # the user's graph code may raise anything
        raise ConfigError(user_code_error(path, exc)) from None


def user_code_error(path: Path, exc: BaseException) -> str:
    """One line for an exception raised by the user's file: the file, the line, the reason.

    For a ``NameError`` it names the undefined name and, when the function binds a similar
    one, that name and the line that binds it.
    """
    frames = [
        frame for frame in traceback.extract_tb(exc.__traceback__) if Path(frame.filename).resolve() == path.resolve()
    ]
    where = f"{path}:{frames[-1].lineno}" if frames else str(path)
    function = f"{frames[-1].name} " if frames else ""
    if isinstance(exc, NameError) and getattr(exc, "name", None):
        line = f"{where}: {function}uses the name {exc.name!r}, which is not defined"
        bound = _bound_names(path)
        close = difflib.get_close_matches(exc.name, bound, n=1)
        if close:
            line += f" (did you mean {close[0]!r}, bound on line {bound[close[0]]}?)"
        return line
    return f"{where}: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}".rstrip(": ")


def _bound_names(path: Path) -> dict[str, int]:
    """Every name the file assigns, with the first line that assigns it."""
    names: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.setdefault(node.id, node.lineno)
    return names

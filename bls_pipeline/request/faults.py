"""Who is to blame when a sub-model fails: the image, or the server.

Triton 2.51 hands every failed BLS response back as ``INTERNAL`` (the sub-model's
``INVALID_ARG`` is lost), so the classifier can only tell an image that DALI cannot decode
from a failing server by the error text. The rule: only DALI's *decoder* failing on the
data blames the input; everything else (a dead or restarting stub, a timeout, CUDA errors
and out-of-memory, even when DALI reports them from inside the decoder) is the server's
fault, answered ``INTERNAL``, and never retried image by image.

Example::

    blames_input("Error in CPU operator `nvidia.dali.fn.decoders.image` ... Failed to decode")  # True
    blames_input("Error in MIXED operator `nvidia.dali.fn.decoders.image` ... out of memory")    # False
    summarize_dali_error(message)    # one line for the client; the full text goes to the log
"""

from __future__ import annotations

import re

# Lines of DALI's error text that carry no reason: headers, the traceback of the pipeline
# definition, and the note that follows every failure of a pipeline run.
_DALI_NOISE = ("File ", "Critical error", "Error in", "which was", "encountered:", "Current pipeline object")
_DALI_SAMPLE = re.compile(r"\s+(?:of )?sample #\d+")
_FAILED_SAMPLE = re.compile(r"Failed to decode sample #(\d+)")
# The Python traceback DALI appends to an error raised in Python code ("At:" and indented frames).
_DALI_PYTHON_FRAMES = re.compile(r"^At:\n(?:[ \t]+\S.*(?:\n|$))*", re.MULTILINE)

# DALI names the operator that failed on the data: "Error in CPU operator `...decoders.image`"
# ("MIXED" on a GPU), whether the DALI backend or this package's DALI model sent it.
_DECODER_ERROR = re.compile(r"Error in \w+ operator `nvidia\.dali\.fn\.decoders\.image`")
# Faults of the machine, not of the image, that DALI may report from inside the decoder:
# CUDA runtime/driver errors, allocation failures, nvJPEG's own non-data failures.
_SYSTEM_FAULT = re.compile(
    r"\bCUDA (?:runtime |driver )?(?:API )?error|\bcudaError\w*|\bCUDA_ERROR_\w+|out of memory|\bOOM\b|bad_alloc|can'?not allocate|can't allocate|failed to allocate"
    r"|illegal memory access|device-side assert|NVJPEG_STATUS_(?:ALLOCATOR_FAILURE|EXECUTION_FAILED"
    r"|INTERNAL_ERROR|ARCH_MISMATCH|NOT_INITIALIZED)|driver shutting down|no CUDA-capable device",
    re.IGNORECASE,
)


def is_system_fault(message: str) -> bool:
    """Whether an error text reports a fault of the machine (CUDA, memory) rather than of data.

    The traceback lines of DALI's text (``File "...dali.py"``) are not read: a path is no reason.
    """
    reasons = "\n".join(line for line in message.splitlines() if not line.strip().startswith("File "))
    return _SYSTEM_FAULT.search(reasons) is not None


def blames_input(message: str) -> bool:
    """Whether a sub-model's error text is about one of its images rather than the sub-model.

    True only for DALI's decoder failing on the data; a CUDA error or out-of-memory inside the
    decoder, a dead stub ("Stub process 'preprocessing_0_0' is not healthy."), an unknown
    model or a timeout are the server's.
    """
    return _DECODER_ERROR.search(message) is not None and not is_system_fault(message)


def failed_sample(message: str, batch_size: int) -> int | None:
    """The number DALI gives the sample its decoder failed on (``Failed to decode sample #3``),
    when it names one within a batch of ``batch_size``; ``None`` otherwise."""
    found = _FAILED_SAMPLE.search(message)
    if found is None or int(found.group(1)) >= batch_size:
        return None
    return int(found.group(1))


def summarize_dali_error(message: str, *, keep_sample: bool = False) -> str:
    """One line out of DALI's multi-line error: the failing operator and DALI's reason.

    DALI numbers samples within its own batch (``Failed to decode sample #0 :``), which
    means nothing to a client: the number is dropped, unless ``keep_sample`` (for the
    classifier, which sent that batch and finds the bad image by it: :func:`failed_sample`).
    """
    lines = [line.strip() for line in _DALI_PYTHON_FRAMES.sub("", message).splitlines() if line.strip()]
    if not lines:
        return message
    operator = next((line for line in lines if line.startswith("Error in")), None)
    reason = next((line for line in reversed(lines) if not line.startswith(_DALI_NOISE)), None)
    if reason is None:
        reason = "" if operator else lines[-1]
    if operator is None:
        summary = reason
    else:
        operator = operator.rstrip(",")
        summary = f"{operator}: {reason}" if reason else operator
    # A summary that is summarized again (a Python-hosted model's one line) loses its number too.
    return re.sub(r"\s+:", ":", summary if keep_sample else _DALI_SAMPLE.sub("", summary)).rstrip(" :")

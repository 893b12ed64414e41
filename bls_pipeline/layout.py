"""The names of the files and folders inside a model repository, in one place.

The builder writes them, the runtime and the Triton adapters read them, the launcher, the
benchmark and the demo find their way through a built repository with them. Standard library
only, so that any layer may import it (the classifier's container copy does not need it).
``preprocessing/1/dali.py`` keeps its own copy of ``SETTINGS_FILE`` (the DALI backend loads
that file without this package); a test holds the two equal.

Example::

    from bls_pipeline import layout

    layout.config_path(repository, "classifier")           # <repository>/classifier/config.pbtxt
    layout.version_dir(repository, "preprocessing") / layout.DALI_FILE
"""

from __future__ import annotations

from pathlib import Path

# Where build_repo writes a repository unless told otherwise, and where serve and bench look.
DEFAULT_REPOSITORY = Path("build/model_repository")
# The build's spec, written at the repository's root (Triton reads only model folders there).
BUILD_SPEC_FILE = "bls_build.json"
# Every model: <model>/config.pbtxt and its one version, <model>/1/.
CONFIG_FILE = "config.pbtxt"
VERSION = "1"
# A Python-backend model's shell (the model_repository/ sources).
MODEL_FILE = "model.py"
# The classifier's label table, one label per line in class order.
LABELS_FILE = "labels.txt"
# Preprocessing: the DALI pipeline's source, its settings, its serialized form (what Triton's
# DALI backend loads first) and the warm-up images beside the version folder.
DALI_FILE = "dali.py"
SETTINGS_FILE = "preprocessing.json"
SERIALIZED_FILE = "model.dali"
WARMUP_DIR = "warmup"
# The network in each runtime's form.
ONNX_FILE = "model.onnx"
PLAN_FILE = "model.plan"
TORCH_WEIGHTS_FILE = "model.pt"

# The ONNX Runtime session config entry that our build of Triton's ONNX Runtime backend passes
# through from the network's config parameters (bls_pipeline.backends.recipe).
ORT_ALLOW_SPINNING = "session.intra_op.allow_spinning"


def config_path(repository: Path, model: str) -> Path:
    """``<repository>/<model>/config.pbtxt``."""
    return Path(repository) / model / CONFIG_FILE


def version_dir(repository: Path, model: str) -> Path:
    """``<repository>/<model>/1``: the folder of the model's files."""
    return Path(repository) / model / VERSION

"""Where the ``model_repository/`` sources and the ``samples/`` photographs are: in the
installed package, or in the checkout.

The product owner fixed ``model_repository/`` (the ``model.py`` shells and
``preprocessing/1/dali.py``) at the top of the project, beside ``bls_pipeline/``, and
``samples/`` (the photographs every ``--dali-pipeline`` conversion is verified on) beside it. A
checkout or an editable install reads those folders; a built wheel carries a copy of them as
``bls_pipeline/model_repository/`` and ``bls_pipeline/samples/`` (``setup.py`` copies them at
build time), because an installed package has no project folder around it. Example::

    shutil.copyfile(model_source("classifier", "model.py"), version_dir / "model.py")
    photos = sorted(samples_dir().iterdir())
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent
# The folder names are the same in both places, so a wheel mirrors the checkout's layout.
MODEL_SOURCES = "model_repository"
SAMPLES = "samples"


def project_folder(name: str) -> Path:
    """The project folder ``name``: the installed copy if there is one.

    The installed copy wins: in a checkout it does not exist, and in an installed package
    the folder beside ``site-packages/bls_pipeline`` is not this project's.
    """
    installed = _PACKAGE_DIR / name
    return installed if installed.is_dir() else _PACKAGE_DIR.parent / name


def model_sources_dir() -> Path:
    """The folder holding ``<model>/1/<file>`` sources."""
    return project_folder(MODEL_SOURCES)


def samples_dir() -> Path:
    """The folder of the sample photographs (``samples/``)."""
    return project_folder(SAMPLES)


def model_source(model: str, file: str) -> Path:
    """The source ``file`` of ``model``'s version directory, e.g. ``("classifier", "model.py")``."""
    return model_sources_dir() / model / "1" / file

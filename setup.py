"""Build hook: ship the top-level ``model_repository/`` sources and ``samples/`` photographs
inside the package.

Metadata, dependencies and entry points are in ``setup.cfg``. The product owner fixed
``model_repository/`` and ``samples/`` beside ``bls_pipeline/``, which setuptools cannot
declare as data of ``bls_pipeline`` (they are outside the package and not packages
themselves), so the wheel build copies the ``*/1/*.py`` sources to
``bls_pipeline/model_repository/`` and the photographs to ``bls_pipeline/samples/``, where
:mod:`bls_pipeline.model_sources` finds them in an installed package.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

# The project files the package needs, by pattern.
PROJECT_FILES = ("model_repository/*/1/*.py", "samples/*")


class BuildPyWithModelSources(build_py):
    """``build_py`` that also copies the model sources into the built package."""

    def _copies(self) -> list[tuple[Path, Path]]:
        # An editable install keeps reading the checkout's folder.
        if getattr(self, "editable_mode", False):
            return []
        sources = sorted(path for pattern in PROJECT_FILES for path in Path().glob(pattern) if path.is_file())
        return [(source, Path(self.build_lib, "bls_pipeline", source)) for source in sources]

    def run(self) -> None:
        super().run()
        for source, target in self._copies():
            self.mkpath(str(target.parent))
            self.copy_file(str(source), str(target))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), *(str(target) for _, target in self._copies())]


setup(cmdclass={"build_py": BuildPyWithModelSources})

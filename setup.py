"""Build hook: ship the top-level ``model_repository/`` sources inside the package.

Metadata, dependencies and entry points are in ``setup.cfg``. The product owner fixed
``model_repository/`` beside ``bls_pipeline/``, which setuptools cannot declare as data of
``bls_pipeline`` (it is outside the package and not a package itself), so the wheel build
copies its ``*/1/*.py`` files to ``bls_pipeline/model_repository/``, where
:func:`bls_pipeline.model_sources.model_sources_dir` finds them in an installed package.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SOURCES = "model_repository"


class BuildPyWithModelSources(build_py):
    """``build_py`` that also copies the model sources into the built package."""

    def _copies(self) -> list[tuple[Path, Path]]:
        # An editable install keeps reading the checkout's folder.
        if getattr(self, "editable_mode", False):
            return []
        return [(source, Path(self.build_lib, "bls_pipeline", source)) for source in sorted(Path(SOURCES).glob("*/1/*.py"))]

    def run(self) -> None:
        super().run()
        for source, target in self._copies():
            self.mkpath(str(target.parent))
            self.copy_file(str(source), str(target))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), *(str(target) for _, target in self._copies())]


setup(cmdclass={"build_py": BuildPyWithModelSources})

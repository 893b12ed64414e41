"""Python-backend entry point of the ``preprocessing`` model; the logic lives in ``bls_pipeline``."""

from bls_pipeline.serving.models import PreprocessingModel as TritonPythonModel  # noqa: F401

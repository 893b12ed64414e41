"""Python-backend entry point of the ``preprocessing`` model; the logic lives in ``bls_pipeline``."""

from bls_pipeline.triton_adapter import PreprocessingModel as TritonPythonModel  # noqa: F401

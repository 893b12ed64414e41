"""Python-backend entry point of the ``efficientnet-b0`` model; the logic lives in ``bls_pipeline``."""

from bls_pipeline.serving.models import NetworkModel as TritonPythonModel  # noqa: F401

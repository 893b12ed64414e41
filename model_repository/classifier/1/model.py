"""Python-backend entry point of the ``classifier`` model; the logic lives in ``bls_pipeline``."""

from bls_pipeline.serving.models import ClassifierModel as TritonPythonModel  # noqa: F401

"""Serve a DALI-preprocessed EfficientNet on Triton through one BLS endpoint, ``classifier``.

The package is the project's logic; Triton's ``model.py`` files only adapt it. Modules:

- ``errors``: the package's exception tree
- ``padding``, ``image_header``, ``postprocess``, ``classifier``: pure request logic
- ``triton_adapter``: the Python-backend models and the one BLS call helper
- ``dali_runner``, ``network_runtime``: DALI and the network in process
- ``preprocessing``, ``networks``, ``checkpoints``, ``export``, ``model_config``, ``repository``,
  ``build``: the repository build
- ``server``, ``client``: the local ``tritonserver`` and a client for the endpoint
- ``cli``: what the command-line tools in ``tools/`` share
- ``bench``, ``bench_repository``, ``bench_models``, ``naive``: the benchmark and the designs
  it compares with; ``soak``: the soak test

Importing the package imports none of them: the classifier must load in the NVIDIA Triton
container, which has neither torch nor DALI.
"""

__version__ = "0.1.0"

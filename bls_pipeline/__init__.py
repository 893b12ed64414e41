"""Serve a DALI-preprocessed EfficientNet on Triton through one BLS endpoint, ``classifier``.

The package is the project's logic; Triton's ``model.py`` files only adapt it. Its floors,
each importing only the ones below it:

- ``devtools``: the libraries of the command-line tools: ``server`` (the local launcher),
  ``processes`` (its stubs, CPU time and shared memory, from /proc) and ``sizing`` (its memory pools), ``client`` and ``files``, ``bench`` (CPU and GPU benchmark),
  ``soak``, ``capacity``, ``backends`` (building Triton's own DALI and ONNX Runtime backends),
  ``cli`` (what the tools share)
- ``build``: the repository build: ``checkpoints``, ``networks``, ``export``, ``model_config``,
  ``repository``, ``hosting``, ``preprocessing``, ``user_pipeline`` and ``reader_layouts``,
  ``pipeline`` (the build itself)
- ``serving``: the Triton adapters, the only ``pb_utils`` users: ``models``, ``bls`` (the one
  BLS helper), ``metrics``
- ``request``: request logic free of Triton and torch: ``image_formats``, ``padding``,
  ``image_header``, ``orchestration``, ``faults``, ``postprocess``
- ``runtime``: in process: ``device`` (the one CPU/GPU setting), ``dali``, ``network``,
  ``torch_network``
- ``contract`` (model and tensor names, dtypes, dims), ``errors`` (the exception tree),
  ``model_sources`` (where the ``model_repository/`` sources are)

Importing the package imports none of them: the classifier must load in the NVIDIA Triton
container, which has neither torch nor DALI.
"""

__version__ = "0.1.0"

"""Serve a DALI-preprocessed EfficientNet on Triton through one BLS endpoint, ``classifier``.

The package is the project's logic; Triton's ``model.py`` files only adapt it. Its floors,
each importing only the ones below it (``make test`` checks it: ``[tool.importlinter]`` in
``pyproject.toml``):

- ``cli``: the commands (``main(argv=None) -> int`` each; the console scripts and the thin
  ``tools/*.py`` scripts call them) and ``common`` (what they share: exit codes, help, progress)
- ``devtools``: development tooling: ``bench`` (CPU and GPU benchmark), ``soak``, ``overload``
  (open-loop load beyond capacity), ``capacity``
- ``server`` (the local launcher: ``launcher`` (``LocalTritonServer``), ``staging`` (its
  backend directory and environment), ``lifecycle`` (readiness, drain, stop), ``watchdog``
  (reloads a model whose stub died), ``logs``, ``processes`` (its stubs, CPU time and shared
  memory, from /proc), ``sizing`` (its memory pools), ``admin`` (the closed admin APIs' key and
  flags; the container's entrypoint)) beside ``client`` and ``client_files``
  (classifying files through the endpoint)
- ``builder``: the repository build: ``export``, ``model_config``, ``repository``, ``hosting``,
  ``user_pipeline`` and ``reader_layouts``, ``pipeline`` (the build itself)
- ``backends``: building and finding Triton's own DALI and ONNX Runtime backends
- ``serving``: the Triton adapters, the only ``pb_utils`` users: ``models``, ``bls`` (the one
  BLS helper), ``metrics``
- ``request``: request logic free of Triton and torch: ``image_formats``, ``padding``,
  ``image_header``, ``orchestration``, ``faults``, ``postprocess``
- ``runtime``: in process: ``device`` (the one CPU/GPU setting), ``dali``, ``network``,
  ``torch_network``
- ``networks``: torch, no Triton: ``architectures``, ``checkpoints`` (checkpoint layouts),
  ``preprocessing`` (the preprocessing each was validated with)
- ``contract`` (model and tensor names, dtypes, dims), ``layout`` (the file names inside a
  repository), ``errors`` (the exception tree), ``model_sources`` (where the
  ``model_repository/`` sources are)

Importing the package imports none of them: the classifier must load in the NVIDIA Triton
container, which has neither torch nor DALI.
"""

__version__ = "0.1.0"

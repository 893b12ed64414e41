#!/usr/bin/env python3
"""``bls-build-repo`` from a checkout: the command lives in :mod:`bls_pipeline.cli.build_repo` (``--help``)."""

from bls_pipeline.cli.build_repo import main

if __name__ == "__main__":
    raise SystemExit(main())

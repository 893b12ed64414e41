#!/usr/bin/env python3
"""``make backends`` from a checkout: the command lives in :mod:`bls_pipeline.cli.build_backends` (``--help``)."""

from bls_pipeline.cli.build_backends import main

if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""``make demo`` from a checkout: the command lives in :mod:`bls_pipeline.cli.demo` (``--help``)."""

from bls_pipeline.cli.demo import main

if __name__ == "__main__":
    raise SystemExit(main())

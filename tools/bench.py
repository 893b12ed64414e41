#!/usr/bin/env python3
"""``bls-bench`` from a checkout: the command lives in :mod:`bls_pipeline.cli.bench` (``--help``)."""

from bls_pipeline.cli.bench import main

if __name__ == "__main__":
    raise SystemExit(main())

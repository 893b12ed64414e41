#!/usr/bin/env python3
"""``bls-serve`` from a checkout: the command lives in :mod:`bls_pipeline.cli.serve` (``--help``)."""

from bls_pipeline.cli.serve import main

if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""``bls-capacity`` from a checkout: the command lives in :mod:`bls_pipeline.cli.capacity` (``--help``)."""

from bls_pipeline.cli.capacity import main

if __name__ == "__main__":
    raise SystemExit(main())

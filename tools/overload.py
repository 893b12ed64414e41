#!/usr/bin/env python3
"""``bls-overload`` from a checkout: the command lives in :mod:`bls_pipeline.cli.overload` (``--help``)."""

from bls_pipeline.cli.overload import main

if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""``bls-classify`` from a checkout: the command lives in :mod:`bls_pipeline.cli.classify` (``--help``)."""

from bls_pipeline.cli.classify import main

if __name__ == "__main__":
    raise SystemExit(main())

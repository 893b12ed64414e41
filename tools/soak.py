#!/usr/bin/env python3
"""``bls-soak`` from a checkout: the command lives in :mod:`bls_pipeline.cli.soak` (``--help``)."""

from bls_pipeline.cli.soak import main

if __name__ == "__main__":
    raise SystemExit(main())

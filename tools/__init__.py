"""Command-line tools of the project; each module has ``main(argv=None) -> int``."""

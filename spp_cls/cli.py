"""The `spp-cls` entry point (filled in step by step)."""
import sys


def main(argv: list[str] | None = None) -> int:
    raise SystemExit("spp-cls: not implemented yet")

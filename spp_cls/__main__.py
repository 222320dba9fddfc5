"""`python -m spp_cls ...` runs the `spp-cls` command (where the console script is not on the PATH)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())

"""Puts this checkout's root first on ``sys.path``, so that ``python benchmarks/x.py`` imports the checkout's
``spp_cls`` whether or not it is installed (Python puts the script's own folder there, not the root).

Every benchmark script imports this module before anything of ``spp_cls``."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

"""The errors of `spp-cls shards` that its command line turns into an exit status."""
from __future__ import annotations

from spp_cls.data.manifest import Manifest


class ShardsInputError(ValueError):
    """The source folder or an option is unusable; the command exits with status 2."""


class ShardsStateError(RuntimeError):
    """OUT already holds shards that another conversion (other settings or files) wrote; exit status 2."""


class StrictSkipError(RuntimeError):
    """`strict=True` and files were skipped; the shards are written but no manifest is.

    Attributes:
        manifests: the manifests that would have been written, per split (not saved).
    """

    def __init__(self, manifests: dict[str, Manifest]):
        self.manifests = manifests
        count = sum(len(m.skipped) for m in manifests.values())
        super().__init__(
            f"--strict: {count} source file(s) skipped, so no manifest was written; the shards are kept and a "
            f"rerun without --strict finishes in seconds"
        )


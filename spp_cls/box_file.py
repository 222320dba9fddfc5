"""Box files, as `spp-cls predict --boxes` and `spp-cls bench windows --boxes` read them: a JSON object mapping an
image (its path as given, or its file name) to its boxes, each [x0, y0, x1, y1] in pixels of that image as on disk,
the half-open box [x0, x1) x [y0, y1).

One rule for a box over the image's edge, the one `SppNet.forward_windows` follows: it is cut at the edge. A box with
no area, or lying wholly outside its image, is refused.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

Box = list[float]


class BoxFileError(ValueError):
    """A box file that cannot be used: one `error:` line, exit status 2."""


def read_box_file(path: Path) -> dict[str, list[Box]]:
    """The box file: a JSON object mapping an image name to a list of [x0, y0, x1, y1] boxes (numbers)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BoxFileError(f"cannot read box file {path}: {error}") from None
    if not isinstance(data, dict):
        raise BoxFileError(f"box file {path}: expected a JSON object mapping each image to its list of boxes")
    for name, boxes in data.items():
        if not isinstance(boxes, list) or not all(
                isinstance(box, list) and len(box) == 4
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box) for box in boxes):
            raise BoxFileError(f"box file {path}: the boxes of {name!r} must be a list of [x0, y0, x1, y1] numbers")
    return data


def boxes_of(image: Path, box_file: dict[str, list[Box]], source: Path) -> list[Box]:
    """The boxes of `image` in the box file read from `source`, found by its path as given or by its file name."""
    for key in (str(image), image.name):
        if key in box_file:
            return box_file[key]
    raise BoxFileError(f"box file {source} has no boxes for {image} (keys are image paths or file names)")


def cut_at_edge(boxes: Sequence[Sequence[float]], width: int, height: int, image: str | Path) -> list[Box]:
    """The boxes of a width x height image, each cut at the image's edge; refuses a box with no area or one that
    lies wholly outside."""
    cut = []
    for index, (x0, y0, x1, y1) in enumerate(boxes):
        if not (x0 < x1 and y0 < y1):
            raise BoxFileError(f"box {index} {[x0, y0, x1, y1]} of {image} has no area (x1 <= x0 or y1 <= y0)")
        if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
            raise BoxFileError(f"box {index} {[x0, y0, x1, y1]} of {image} lies wholly outside the image "
                               f"({width}x{height})")
        cut.append([max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)])
    return cut

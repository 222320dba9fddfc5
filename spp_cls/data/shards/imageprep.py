"""One source image: bytes in, RGB baseline JPEG out, or the reason it cannot be stored."""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_JPEG_SIDE = 65_500
EXIF_ORIENTATION_TAG = 0x0112


class UnreadableImage(Exception):
    """A source file that does not give an image; the message is the reason recorded in the manifest."""


@dataclass
class NormalisedImage:
    """The JPEG to store, the source size after EXIF orientation, and the RGB image the JPEG was made from."""

    jpeg: bytes
    orig_size: tuple[int, int]
    rgb: Image.Image


def shorter_side_size(width: int, height: int, shorter_side: int) -> tuple[int, int]:
    """(w, h) scaled so that min(w, h) == shorter_side, keeping the aspect ratio (rounded to the nearest pixel)."""
    if width <= height:
        return shorter_side, max(1, round(height * shorter_side / width))
    return max(1, round(width * shorter_side / height)), shorter_side


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        # NOTE: 32-bit "I" images are assumed to hold 16-bit values, as PNG and most TIFF files do.
        values = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def normalise_image(data: bytes, shorter_side: int | None, quality: int) -> NormalisedImage:
    """Decode any image PIL reads, apply its EXIF orientation, make it RGB, resize it and encode a baseline JPEG.

    Transparent images are composited on white; 16-bit greyscale is scaled to 8 bits; CMYK is converted without ICC
    colour management. With `shorter_side` None the size is kept. An RGB baseline JPEG that needs no change (no
    rotation, no resize) is stored as its original bytes, so full-size val images lose nothing.

    Raises:
        UnreadableImage: the data is empty, not an image, truncated, too large or too elongated to store as JPEG.
    """
    if not data:
        raise UnreadableImage("empty file")
    try:
        with warnings.catch_warnings():
            # DecompressionBombWarning (over 89 Mpixel) is fine for a one-off conversion; PIL still raises
            # DecompressionBombError beyond twice that, which is reported below. EXIF warnings are noise.
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data))
            source_format, source_mode = image.format, image.mode
            progressive = bool(image.info.get("progressive") or image.info.get("progression"))
            orientation = image.getexif().get(EXIF_ORIENTATION_TAG, 1)
            rotated = orientation in (5, 6, 7, 8)
            width, height = (image.height, image.width) if rotated else image.size
            target = shorter_side_size(width, height, shorter_side) if shorter_side else (width, height)
            if source_format == "JPEG" and target[0] < width:
                # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the result stays at least as large as the target.
                image.draft(None, (target[1], target[0]) if rotated else target)
            image.load()
            image = ImageOps.exif_transpose(image) if orientation != 1 else image
            rgb = _to_rgb(image)
    except UnidentifiedImageError:
        raise UnreadableImage("not an image (no format PIL recognises)") from None
    except Image.DecompressionBombError as error:
        raise UnreadableImage(f"too many pixels: {error}") from None
    except Exception as error:  # noqa: BLE001 - PIL plugins raise many types; every one means "cannot decode"
        raise UnreadableImage(f"cannot decode: {type(error).__name__}: {error}") from None
    if max(target) > MAX_JPEG_SIDE:
        raise UnreadableImage(f"{width}x{height} resized to {target[0]}x{target[1]} exceeds JPEG's size limit")
    unchanged = source_format == "JPEG" and source_mode == "RGB" and not progressive and orientation == 1
    if unchanged and target == (width, height):
        return NormalisedImage(data, (width, height), rgb)
    if rgb.size != target:
        rgb = rgb.resize(target, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=quality)
    return NormalisedImage(buffer.getvalue(), (width, height), rgb)

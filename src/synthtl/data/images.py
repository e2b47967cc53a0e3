"""Decoding any image file into 8-bit RGB, with errors that name the file."""

from __future__ import annotations

import contextlib
import io
import os
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from synthtl.errors import BadImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")

# PIL's EXIF/palette warnings are noise here (real failures raise). Filtered once at import: a per-call
# `warnings.catch_warnings()` is not thread-safe and, from the cache's thread pool, could switch warnings off for good.
warnings.filterwarnings("ignore", module=r"PIL\.")
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def hidden(name: str) -> bool:
    """Whether a listing skips (and reports) a name: it starts with "." (.git, .DS_Store, macOS "._x.jpg") or is
    __MACOSX (what unzipping a macOS archive adds), the rule `ls`, git and Hugging Face's imagefolder follow."""
    return name.startswith(".") or name == "__MACOSX"


def printable(name: str | os.PathLike) -> str:
    """`name` safe to print and to put in JSON: bytes that are not UTF-8 (a file name such as b"\\xff.jpg", which
    Python holds as a lone surrogate) are shown as `\\xff` instead of crashing the print."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode (1, L, P, LA, RGBA, CMYK, YCbCr, I;16, I, F, ...) as RGB; transparency over white."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":  # 16/32-bit integer or float grey: keep the full dynamic range
        arr = np.asarray(img).astype(np.float64)
        peak = float(arr.max()) if arr.size else 0.0
        if img.mode == "F":
            scale = 255.0 if peak <= 1.0 else 1.0  # float images are usually in [0, 1]
        elif peak <= 255:
            scale = 1.0
        elif peak <= 65535:
            scale = 255.0 / 65535.0
        else:
            scale = 255.0 / peak
        return Image.fromarray(np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8), mode="L").convert("RGB")
    if img.mode in ("LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img.convert("RGB")


def load_rgb(path: str | os.PathLike, data: bytes | None = None, min_short_side: int = 0) -> Image.Image:
    """Opens and fully decodes an image (from `data` if given) as upright RGB, or raises a `BadImageError` naming it.
    With `min_short_side`, a large JPEG is decoded at a reduced DCT scale (libjpeg's 1/2, 1/4, 1/8) that keeps its
    short side at least that long: much faster when the caller downsizes anyway."""
    try:
        src = io.BytesIO(data) if data is not None else open(path, "rb")  # noqa: SIM115
        with src, Image.open(src) as img:
            if min_short_side and img.format == "JPEG":
                w, h = img.size
                k = min_short_side / min(w, h)
                if k < 0.5:
                    img.draft("RGB", (int(w * k) + 1, int(h * k) + 1))
            img.load()
            # Upright as image viewers and torchvision's `decode_image(apply_exif_orientation=True)` show it. EXIF
            # that cannot be parsed leaves the pixels as stored (they are fine, so this is not a bad image).
            with contextlib.suppress(OSError, SyntaxError, ValueError, TypeError, KeyError, struct.error):
                ImageOps.exif_transpose(img, in_place=True)
            return to_rgb(img)
    except FileNotFoundError:
        raise BadImageError(printable(path), "file not found") from None
    except UnidentifiedImageError:
        raise BadImageError(printable(path), "not a recognised image format") from None
    except Image.DecompressionBombError as e:
        raise BadImageError(printable(path), f"too many pixels ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImageError(printable(path), f"corrupt or truncated ({printable(str(e))})") from None

"""One definition of what the network sees: an image file's bytes -> an upright RGB JPEG whose
shorter side is at most `clean.max_short_side`, or the reason it is rejected.

The clean stage runs `judge_bytes` over every extracted file and writes the JPEGs it returns to
data/clean; train and evaluate decode those files. `predict` and `export`'s checks run the same
function on a user's photo (`model_input`), with the clean settings the checkpoint recorded, so a
photo reaches the network exactly as a training image did: EXIF orientation applied, converted to
RGB (transparency on white), downscaled with INTER_AREA, JPEG-encoded at `clean.jpeg_quality` and
decoded again with `transforms.decode`, the one decoder training uses too. The checks and reasons
are described in transferline/data/clean.py.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import cv2
import numpy as np
from PIL import Image, ImageOps

from transferline.config.params import Clean
from transferline.data import near_duplicates

if TYPE_CHECKING:  # annotations only: clean's processes never import torch
    import torch

REASONS = (
    "empty",
    "not_image",
    "undecodable",
    "truncated",
    "too_small",
    "too_many_pixels",
    "duplicate",
)
# Pillow format names of the raster formats photos arrive in (MPO: camera JPEG with extra frames)
ACCEPTED_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP", "DIB", "WEBP", "TIFF", "PPM", "AVIF")
# header prefix -> format, to tell a damaged image (undecodable/truncated) from a non-image
MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


@dataclass(frozen=True)
class Outcome:
    """What one file became: a normalised JPEG (`jpeg` set) or a rejection reason."""

    sha256: str
    reason: Optional[str] = None
    detail: str = ""
    jpeg: Optional[bytes] = None
    width: int = 0
    height: int = 0
    dhash: str = ""  # perceptual hash of a kept image (transferline/data/near_duplicates.py)


def jpeg_complete(data: bytes) -> bool:
    """False when the data ends before a JPEG's EOI marker (data after EOI is ignored).

    Walks the marker segments; inside entropy-coded data a 0xFF is always followed by 0x00
    (stuffing) or a restart marker, so the next other marker ends the scan. Like libjpeg, junk
    where a marker should be is skipped up to the next 0xFF (a damaged file is left to the
    decoder to judge: only running out of data counts as truncation)."""
    i, n = 2, len(data)
    while i + 1 < n:
        if data[i] != 0xFF:
            i = data.find(b"\xff", i)
            if i < 0:
                return False
            continue
        marker = data[i + 1]
        if marker == 0xD9:
            return True
        if marker == 0xFF or 0xD0 <= marker <= 0xD7 or marker == 0x01:
            i += 1 if marker == 0xFF else 2  # fill byte / marker without a length
            continue
        if i + 3 >= n:
            return False
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
        if marker != 0xDA:  # not start-of-scan: the segment length covered it
            continue
        while True:  # entropy-coded data: find the next real marker
            i = data.find(b"\xff", i)
            if i < 0 or i + 1 >= n:
                return False
            if data[i + 1] in (0x00, 0xFF) or 0xD0 <= data[i + 1] <= 0xD7:
                i += 1
                continue
            break
    return False


def _clean_message(exc: BaseException) -> str:
    # Pillow messages can carry object addresses ("<_io.BytesIO object at 0x7f..>")
    return re.sub(r"<[^>]* at 0x[0-9a-f]+>", "data", f"{type(exc).__name__}: {exc}").strip()


def _identify(data: bytes, max_pixels: int) -> tuple[Optional[Image.Image], Optional[tuple]]:
    """(lazily opened Pillow image, None) or (None, (reason, detail)); reads the header only."""
    magic = next((fmt for prefix, fmt in MAGIC if data.startswith(prefix)), None)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        magic = "WEBP"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        return None, ("too_many_pixels", _clean_message(exc))
    except Exception as exc:  # Pillow raises many types for a bad header
        if magic is None:
            return None, ("not_image", f"no image header (starts with {data[:8].hex()})")
        if magic == "JPEG" and not jpeg_complete(data):
            return None, ("truncated", "JPEG data ends before the end-of-image marker")
        return None, ("undecodable", f"{magic} header unreadable: {_clean_message(exc)}")
    if im.format not in ACCEPTED_FORMATS:
        return None, (
            "not_image",
            f"{im.format} file ({im.format_description}): not an "
            f"accepted image format ({', '.join(ACCEPTED_FORMATS)})",
        )
    w, h = im.size
    if w * h > max_pixels:
        return None, (
            "too_many_pixels",
            f"{w}x{h} = {w * h} pixels > clean.max_pixels {max_pixels}",
        )
    return im, None


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ALPHA_MODES or "transparency" in im.info


def _pillow_decode(im: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 BGR, upright, transparency composited on white."""
    im.load()
    im = ImageOps.exif_transpose(im)
    if _has_alpha(im):
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return cv2.cvtColor(np.asarray(im.convert("RGB")), cv2.COLOR_RGB2BGR)


def _reduce_flag(im: Image.Image, max_short_side: int) -> int:
    """IMREAD flag letting libjpeg decode a big JPEG at 1/8, 1/4 or 1/2 scale (DCT scaling)."""
    if im.format not in ("JPEG", "MPO"):
        return cv2.IMREAD_COLOR
    short = min(im.size)
    for factor, flag in (
        (8, cv2.IMREAD_REDUCED_COLOR_8),
        (4, cv2.IMREAD_REDUCED_COLOR_4),
        (2, cv2.IMREAD_REDUCED_COLOR_2),
    ):
        if short // factor >= max_short_side:
            return flag
    return cv2.IMREAD_COLOR


def _decode(data: bytes, im: Image.Image, params: Clean) -> tuple[Optional[np.ndarray], tuple]:
    """(BGR image, ()) or (None, (reason, detail)). OpenCV first; Pillow for what it can't do."""
    is_jpeg = im.format in ("JPEG", "MPO")
    if is_jpeg and not jpeg_complete(data):
        return None, ("truncated", "JPEG data ends before the end-of-image marker")
    if not _has_alpha(im):
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), _reduce_flag(im, params.max_short_side))
        if bgr is not None:
            return bgr, ()
    try:
        return _pillow_decode(im), ()
    except Exception as exc:  # Pillow raises OSError, ValueError, SyntaxError, ... on bad data
        if "truncated" in str(exc):
            return None, ("truncated", _clean_message(exc))
        return None, ("undecodable", f"OpenCV and Pillow cannot decode it ({_clean_message(exc)})")


def _normalise(bgr: np.ndarray, params: Clean) -> tuple[bytes, int, int]:
    """Downscale so the shorter side <= max_short_side; JPEG bytes, width, height."""
    h, w = bgr.shape[:2]
    short, target = min(h, w), params.max_short_side
    if short > target:  # integer round-half-up: the shorter side is exactly `target`
        w, h = ((side * target * 2 + short) // (2 * short) for side in (w, h))
        bgr = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, params.jpeg_quality])
    assert ok, "OpenCV failed to encode a decoded image as JPEG"
    return buf.tobytes(), w, h


def judge_bytes(data: bytes, params: Clean) -> Outcome:
    """Either normalise one file's bytes or say why they are rejected (`duplicate` is decided
    by the caller, across files)."""
    sha = hashlib.sha256(data).hexdigest()
    if not data:
        return Outcome(sha, "empty", "0 bytes")
    im, rejection = _identify(data, params.max_pixels)
    if rejection:
        return Outcome(sha, *rejection)
    with im:
        bgr, rejection = _decode(data, im, params)
        size = im.size  # header size: min side does not depend on orientation or DCT scaling
    if rejection:
        return Outcome(sha, *rejection)
    if min(size) < params.min_side:
        return Outcome(
            sha, "too_small", f"{size[0]}x{size[1]} has a side < clean.min_side {params.min_side}"
        )
    jpeg, w, h = _normalise(bgr, params)
    return Outcome(sha, jpeg=jpeg, width=w, height=h, dhash=near_duplicates.dhash(bgr))


def decode(data: bytes, name: str | Path = "image") -> np.ndarray:
    """The one decoder of what the network sees: image bytes to (H, W, 3) uint8 RGB; ValueError
    naming `name` when OpenCV cannot decode them. Training and evaluation read data/clean's
    JPEGs with it (transforms.read_image), predict the JPEG `judge_bytes` makes of a photo.

    On the 1082 JPEGs clean wrote from ../shared/datasets (hymenoptera and the PetImages subset)
    every pixel equals torchvision.io.decode_image's (deprecated in the pinned torchvision). EXIF
    orientation is not applied: clean writes upright images without EXIF."""
    buf = np.frombuffer(data, dtype=np.uint8)
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) if buf.size else None
    if bgr is None:
        raise ValueError(f"{name}: OpenCV cannot decode it")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) uint8 tensor. torch is imported here, not at the top: clean
    and its worker processes use this module and should not pay torch's import time and memory
    in every process."""
    import torch

    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


def decode_jpeg_bytes(jpeg: bytes) -> torch.Tensor:
    """(3, H, W) uint8 RGB from JPEG bytes, decoded as data.ImageDataset decodes files."""
    return to_tensor(decode(jpeg))


def model_input(data: bytes, params: Clean) -> tuple[Optional[torch.Tensor], Outcome]:
    """(3, H, W) uint8 exactly as a training image of these bytes was fed from data/clean, or
    (None, the rejection)."""
    res = judge_bytes(data, params)
    if res.jpeg is None:
        return None, res
    return decode_jpeg_bytes(res.jpeg), res

"""The built-in demo dataset: shapes drawn over real-photo backgrounds, packed as one zip.

Used by the download stage for a `datasets.<name>.generate:` entry; not a stage of its own.
`build_demo_zip(path, classes=, per_class=, size=, seed=)` writes a zip that is byte-identical for
the same arguments on any machine with the pinned packages:

    demo/<class>/<class>_<i>.jpg        `per_class` good images per class (a few of them in odd
                                        but valid encodings: CMYK, greyscale, RGBA PNG, BMP)
    demo/<class>/...                    deliberately broken files of the kinds real archives hold
    __MACOSX/demo/<class>/._<name>      macOS resource-fork litter

The class is the shape's outline only: colour, texture, size, position, rotation, background,
clutter, noise and blur are drawn the same way for every class, so a model must learn shape.
Backgrounds are crops of the two photos scikit-learn ships (no network needed).
"""

from __future__ import annotations

import io
import math
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PIL import Image

CLASS_NAMES = ("circle", "square", "triangle", "star", "cross", "ring")
PHOTOS = ("china.jpg", "flower.jpg")  # sklearn.datasets.load_sample_image, 427x640 RGB each

# ---- difficulty knobs -----------------------------------------------------------------------
# Tuned so a small CNN trained from scratch on ~480 images stays clearly below an
# ImageNet-pretrained backbone: busy photo backgrounds, shapes that are sometimes faint,
# outlined or photo-textured, and class-independent clutter. Rough check with these values
# (3 classes x 160, 96 px, seed 0, 70/15/15 split, one run each, 72 test images, CPU): a 3-block
# CNN from scratch (AdamW, 15 epochs) reached 0.40 test accuracy, frozen EfficientNet-Lite0
# features + logistic regression 0.81. Raise CLUTTER/NOISE_SIGMA/TEXTURE_P or lower SHAPE_ALPHA
# to make the task harder for both.
BG_CROP = (0.15, 0.6)  # background crop side, fraction of the photo's shorter side (zoom)
BG_GAIN = (0.6, 1.4)  # per-channel colour gain applied to backgrounds and textures
SHAPE_RADIUS = (0.22, 0.4)  # shape circumradius, fraction of the image side
SHAPE_ASPECT = (0.8, 1.25)  # x/y stretch of the shape (squares become rectangles)
SHAPE_ALPHA = (0.8, 1.0)  # shape opacity; low values let the background show through
OUTLINE_P = 0.35  # chance a polygon is drawn as an outline instead of filled
OUTLINE_WIDTH = (0.05, 0.1)  # outline thickness, fraction of the image side
TEXTURE_P = 0.2  # chance the fill is a photo texture rather than a flat colour
CLUTTER = (0, 2)  # thin distractor lines and arcs per image, [low, high)
NOISE_SIGMA = (1.0, 6.0)  # Gaussian pixel noise, grey levels (0..255)
BLUR_P = 0.5  # chance of a Gaussian blur
BLUR_SIGMA = (0.4, 1.2)  # blur sigma in px at 96 px (scaled with the image side)
JPEG_QUALITY = (70, 95)  # encoder quality range, [low, high]

ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed member timestamp: the zip must not depend on the clock
SUBPIXEL = 4  # cv2 drawing `shift`: vertex coordinates in 1/16 px

HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n"
    b"<body><h1>Not Found</h1><p>The requested image was not found on this server."
    b"</p></body></html>\n"
)
# First bytes of the real formats, padded: what a loader sees when it opens these files.
OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # Thumbs.db (Windows thumbnail cache)
DS_STORE_MAGIC = b"\x00\x00\x00\x01Bud1"  # .DS_Store (macOS Finder)
APPLEDOUBLE_MAGIC = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        "  # ._name forks


@dataclass
class DemoSummary:
    """What `build_demo_zip` wrote, keyed by zip member path."""

    classes: list[str]
    good: dict[str, int]  # class -> good images
    odd: dict[str, str] = field(default_factory=dict)  # odd-but-valid kind -> member
    broken: dict[str, str] = field(default_factory=dict)  # broken kind -> member
    members: int = 0  # file entries in the zip


# ---- drawing --------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    from sklearn.datasets import load_sample_image  # heavy import, only when drawing

    return load_sample_image(name)  # (427, 640, 3) uint8 RGB


def _uniform(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(rng.uniform(*lo_hi))


def _photo_crop(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random square crop of one photo, resized, maybe flipped, colour-shifted: (S, S, 3)."""
    photo = _photo(PHOTOS[int(rng.integers(len(PHOTOS)))])
    h, w = photo.shape[:2]
    side = max(8, int(_uniform(rng, BG_CROP) * min(h, w)))
    x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    # Pillow's resize is plain integer C code: the same bytes on every CPU.
    img = Image.fromarray(photo).resize(
        (size, size), Image.Resampling.BILINEAR, box=(x0, y0, x0 + side, y0 + side)
    )
    arr = np.asarray(img, dtype=np.float32)
    if rng.random() < 0.5:
        arr = arr[:, ::-1]
    if rng.random() < 0.5:
        arr = arr[::-1]
    gain = rng.uniform(*BG_GAIN, size=3).astype(np.float32)
    offset = np.float32(rng.uniform(-25, 25))
    return np.clip(arr * gain + offset, 0, 255)


def _polygon(points: list[tuple[float, float]]) -> Callable[..., None]:
    """A drawer for a polygon given on the unit circle (vertex radius <= 1)."""

    def draw(mask, centre, radius, angle, aspect, width, rng):
        cos, sin = math.cos(angle), math.sin(angle)
        scale = 1 << SUBPIXEL
        pts = [
            (
                centre[0] + radius * aspect * (x * cos - y * sin),
                centre[1] + radius / aspect * (x * sin + y * cos),
            )
            for x, y in points
        ]
        pts = np.array([[round(x * scale), round(y * scale)] for x, y in pts], np.int32)
        if width:
            cv2.polylines(mask, [pts], True, 255, width, cv2.LINE_AA, SUBPIXEL)
        else:
            cv2.fillPoly(mask, [pts], 255, cv2.LINE_AA, SUBPIXEL)

    return draw


def _regular(n: int, start_deg: float, inner: float | None = None) -> list[tuple[float, float]]:
    """n-gon vertices (or an n-pointed star when `inner` radius is given) on the unit circle."""
    step = 360 / n
    pts = []
    for k in range(n):
        a = math.radians(start_deg + k * step)
        pts.append((math.cos(a), math.sin(a)))
        if inner is not None:
            b = math.radians(start_deg + (k + 0.5) * step)
            pts.append((inner * math.cos(b), inner * math.sin(b)))
    return pts


def _cross_points(arm: float = 0.32) -> list[tuple[float, float]]:
    """A plus sign whose arms are `arm` (half-width) wide, scaled to fit the unit circle."""
    q = [(arm, 1), (arm, arm), (1, arm)]
    pts = []
    for sx, sy in ((1, 1), (1, -1), (-1, -1), (-1, 1)):
        quadrant = [(sx * x, sy * y) for x, y in q]
        pts += quadrant if sx * sy > 0 else quadrant[::-1]
    return [(x * 0.8, y * 0.8) for x, y in pts]


def _disc(mask, centre, radius, angle, aspect, width, rng):
    # Always filled: an outlined circle would be a ring. Axes shrunk so its area matches polygons.
    axes = (radius * 0.8 * aspect, radius * 0.8 / aspect)
    _ellipse(mask, centre, axes, angle, -1)


def _ring(mask, centre, radius, angle, aspect, width, rng):
    axes = (radius * 0.85 * aspect, radius * 0.85 / aspect)
    thickness = max(2, round(radius * rng.uniform(0.25, 0.45)))
    _ellipse(mask, centre, axes, angle, thickness)


def _ellipse(mask, centre, axes, angle, thickness):
    scale = 1 << SUBPIXEL
    c = (round(centre[0] * scale), round(centre[1] * scale))
    ax = (round(axes[0] * scale), round(axes[1] * scale))
    cv2.ellipse(mask, c, ax, math.degrees(angle), 0, 360, 255, thickness, cv2.LINE_AA, SUBPIXEL)


# class name -> drawer(mask, centre, radius, angle, aspect, outline width or 0, rng)
SHAPES: dict[str, Callable[..., None]] = {
    "circle": _disc,
    "square": _polygon(_regular(4, 45)),
    "triangle": _polygon(_regular(3, -90)),
    "star": _polygon(_regular(5, -90, inner=0.45)),
    "cross": _polygon(_cross_points()),
    "ring": _ring,
}
OUTLINE_OK = {"square", "triangle", "star", "cross"}  # circle/ring have fixed fills


def _shape_mask(name: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """Anti-aliased coverage of one randomly placed shape: (S, S) uint8, 255 = inside."""
    radius = _uniform(rng, SHAPE_RADIUS) * size
    margin = radius * 0.7  # the shape may be cut by the border, but mostly stays in view
    centre = (rng.uniform(margin, size - margin), rng.uniform(margin, size - margin))
    angle = rng.uniform(0, 2 * math.pi)
    aspect = math.sqrt(_uniform(rng, SHAPE_ASPECT))
    outline = name in OUTLINE_OK and rng.random() < OUTLINE_P
    width = max(1, round(_uniform(rng, OUTLINE_WIDTH) * size)) if outline else 0
    mask = np.zeros((size, size), np.uint8)
    SHAPES[name](mask, centre, radius, angle, aspect, width, rng)
    return mask


def _clutter(img: np.ndarray, rng: np.random.Generator) -> None:
    """Thin lines and arcs in random colours, drawn in place over everything (class-free)."""
    size = img.shape[0]
    for _ in range(int(rng.integers(*CLUTTER))):
        colour = [int(v) for v in rng.integers(0, 256, 3)]
        thick = int(rng.integers(1, 3))
        p = [int(v) for v in rng.integers(0, size, 4)]
        if rng.random() < 0.5:
            cv2.line(img, (p[0], p[1]), (p[2], p[3]), colour, thick, cv2.LINE_AA)
        else:
            axes = (int(rng.integers(4, size // 2)), int(rng.integers(4, size // 2)))
            start = int(rng.integers(0, 360))
            cv2.ellipse(
                img,
                (p[0], p[1]),
                axes,
                int(rng.integers(0, 180)),
                start,
                start + int(rng.integers(30, 150)),
                colour,
                thick,
                cv2.LINE_AA,
            )


def render(class_name: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """One demo image of `class_name`: (size, size, 3) uint8 RGB."""
    bg = _photo_crop(rng, size)
    if rng.random() < TEXTURE_P:
        fill = _photo_crop(rng, size)
    else:
        fill = np.broadcast_to(rng.uniform(0, 255, 3).astype(np.float32), bg.shape)
    alpha = (
        _shape_mask(class_name, rng, size).astype(np.float32)
        * np.float32(_uniform(rng, SHAPE_ALPHA) / 255)
    )[..., None]
    img = np.rint(bg * (1 - alpha) + fill * alpha).astype(np.uint8)
    _clutter(img, rng)
    if rng.random() < BLUR_P:
        sigma = _uniform(rng, BLUR_SIGMA) * size / 96
        # ACCURATE: OpenCV's bit-exact 8-bit path, not a platform-specific approximation
        img = cv2.GaussianBlur(img, (5, 5), sigma, sigmaY=sigma, hint=cv2.ALGO_HINT_ACCURATE)
    noise = rng.normal(0, _uniform(rng, NOISE_SIGMA), img.shape).astype(np.float32)
    return np.clip(np.rint(img + noise), 0, 255).astype(np.uint8)


# ---- encoding -------------------------------------------------------------------------------


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    assert ok, "OpenCV failed to encode a JPEG"
    return buf.tobytes()


def _pil_bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _rgba_png(rgb: np.ndarray) -> bytes:
    # Transparent corners, as a cut-out PNG has; a loader that drops alpha sees black there.
    h, w = rgb.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot(yy - h / 2, xx - w / 2)
    alpha = np.where(r < 0.55 * min(h, w), 255, 0).astype(np.uint8)
    return _pil_bytes(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), "PNG")


def _bmp(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".bmp", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


# Good images stored in unusual but valid encodings: kind -> (file suffix, encoder(rgb, q)).
ODD_FORMATS: dict[str, tuple[str, Callable[[np.ndarray, int], bytes]]] = {
    "cmyk_jpeg": (
        ".jpg",
        lambda rgb, q: _pil_bytes(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=q),
    ),
    "greyscale_jpeg": (
        ".jpg",
        lambda rgb, q: _pil_bytes(Image.fromarray(rgb).convert("L"), "JPEG", quality=q),
    ),
    "rgba_png": (".png", lambda rgb, q: _rgba_png(rgb)),
    "bmp_named_jpg": (".jpg", lambda rgb, q: _bmp(rgb)),
}


# ---- broken files ---------------------------------------------------------------------------
# kind -> builder(class folder, a good image's file name, its bytes, a spare JPEG of the class)
#         -> (zip member path, file bytes).
# Paths are zip member paths; each kind lands in one class folder (kind index mod classes).


def _tiny(spare: bytes) -> bytes:
    rgb = cv2.cvtColor(
        cv2.imdecode(np.frombuffer(spare, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB
    )
    return encode_jpeg(cv2.resize(rgb, (8, 8), interpolation=cv2.INTER_NEAREST), 90)


BROKEN: dict[str, Callable[[str, str, bytes, bytes], tuple[str, bytes]]] = {
    "empty": lambda d, good_name, good, spare: (f"{d}/empty.jpg", b""),
    "truncated_jpeg": lambda d, good_name, good, spare: (
        f"{d}/truncated.jpg",
        spare[: len(spare) * 3 // 5],
    ),
    "html_as_jpg": lambda d, good_name, good, spare: (f"{d}/download.jpg", HTML_PAGE),
    "thumbs_db": lambda d, good_name, good, spare: (f"{d}/Thumbs.db", OLE2_MAGIC + bytes(504)),
    "ds_store": lambda d, good_name, good, spare: (f"{d}/.DS_Store", DS_STORE_MAGIC + bytes(24)),
    "macosx_fork": lambda d, good_name, good, spare: (
        f"__MACOSX/{d}/._{good_name}",
        APPLEDOUBLE_MAGIC + bytes(58),
    ),
    "appledouble_in_class": lambda d, good_name, good, spare: (
        f"{d}/._{good_name}",
        APPLEDOUBLE_MAGIC + bytes(58),
    ),
    "duplicate": lambda d, good_name, good, spare: (f"{d}/copy of {good_name}", good),
    "too_small": lambda d, good_name, good, spare: (f"{d}/thumbnail.jpg", _tiny(spare)),
}


# ---- the archive ----------------------------------------------------------------------------


def _image_rng(seed: int, class_index: int, i: int) -> np.random.Generator:
    # One stream per image: image i is the same whatever per_class or the other classes are.
    return np.random.default_rng([seed, class_index, i])


def _good_images(
    names: list[str], per_class: int, size: int, seed: int, summary: DemoSummary
) -> dict[str, bytes]:
    """Every good image, `per_class` per class; the first few in the odd encodings."""
    odd = {(k % len(names), k): kind for k, kind in enumerate(ODD_FORMATS)}
    files = {}
    for c, name in enumerate(names):
        for i in range(per_class):
            rng = _image_rng(seed, c, i)
            rgb = render(name, rng, size)
            quality = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
            kind = odd.get((c, i))
            suffix, encoder = ODD_FORMATS[kind] if kind else (".jpg", encode_jpeg)
            path = f"demo/{name}/{name}_{i:04d}{suffix}"
            files[path] = encoder(rgb, quality)
            if kind:
                summary.odd[kind] = path
        summary.good[name] = per_class
    return files


def _broken_files(
    names: list[str],
    per_class: int,
    size: int,
    seed: int,
    good: dict[str, bytes],
    summary: DemoSummary,
) -> dict[str, bytes]:
    files = {}
    for k, kind in enumerate(BROKEN):
        c = k % len(names)
        # the last good image of the class: always a plain JPEG (odd encodings use the first)
        good_path = f"demo/{names[c]}/{names[c]}_{per_class - 1:04d}.jpg"
        spare = encode_jpeg(render(names[c], _image_rng(seed, c, per_class + k), size), 90)
        path, data = BROKEN[kind](
            f"demo/{names[c]}", good_path.rsplit("/", 1)[1], good[good_path], spare
        )
        files[path] = data
        summary.broken[kind] = path
    return files


def _write_zip(path: Path, files: dict[str, bytes]) -> None:
    """Stored (uncompressed) members in sorted order with fixed dates and modes, so the bytes
    depend on nothing but `files` (JPEGs do not compress anyway, and zlib output can vary)."""
    dirs = {p.rsplit("/", n)[0] + "/" for p in files for n in range(1, p.count("/") + 1)}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name in sorted(set(files) | dirs):
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.create_system = 3  # Unix, so external_attr carries the modes below
            if name.endswith("/"):
                info.external_attr = (0o40755 << 16) | 0x10  # directory
                zf.writestr(info, b"")
            else:
                info.external_attr = 0o100644 << 16  # regular file, rw-r--r--
                zf.writestr(info, files[name])


def build_demo_zip(
    path: Path, *, classes: int, per_class: int, size: int, seed: int
) -> DemoSummary:
    """Write the demo zip to `path`; same arguments -> same bytes. Returns what it holds."""
    if not 3 <= classes <= len(CLASS_NAMES):
        raise ValueError(f"classes must be 3..{len(CLASS_NAMES)}, got {classes}")
    if per_class < len(ODD_FORMATS) + 1:
        raise ValueError(f"per_class must be at least {len(ODD_FORMATS) + 1}, got {per_class}")
    names = list(CLASS_NAMES[:classes])
    summary = DemoSummary(classes=names, good={})
    files = _good_images(names, per_class, size, seed, summary)
    files.update(_broken_files(names, per_class, size, seed, files, summary))
    summary.members = len(files)
    _write_zip(Path(path), files)
    return summary


# ---- unlabelled images for the predict stage ------------------------------------------------

UNLABELLED_STREAM = 1 << 20  # rng streams [seed, this, k]: never one a training image uses


def unlabelled_images(*, classes: int, n: int, size: int, seed: int) -> dict[str, bytes]:
    """file name -> bytes: `n` fresh images drawn like the demo's (shape k % classes; the name
    does not tell which) plus one truncated JPEG, to show how predict lists a broken file."""
    names = list(CLASS_NAMES[:classes])
    files = {}
    for k in range(n):
        rng = np.random.default_rng([seed, UNLABELLED_STREAM, k])
        files[f"photo_{k:03d}.jpg"] = encode_jpeg(render(names[k % classes], rng, size), 90)
    if n:
        files["broken.jpg"] = files[f"photo_{0:03d}.jpg"][:400]
    return files

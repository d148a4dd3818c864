"""Preprocessing: decode a shard's items, bring each to `data.channels` x `data.resolution`^2.

`data.resize`: pad (centre on a zero canvas; one size for the split), resize (bilinear) or
center_crop (the official 256^2 preprocessing, then `data.downscale`). Every source's items go
through the same code, so a source decides only which images there are, never their pixels.
"""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image, ImageOps

from pipelines.config import DataConfig
from pipelines.data.base import Items, LazySplit

logger = logging.getLogger(__name__)


def first_size(split: LazySplit, cfg: DataConfig) -> tuple[int, int] | None:
    """data.resize=pad: the (w, h) every image of `split` must share (its first image's)."""
    if cfg.resize != "pad" or not len(split):
        return None
    mode = "L" if cfg.channels == 1 else "RGB"
    size: tuple[int, int] = to_mode(split.items.load(0), mode, split.items.describe(0)).size
    return size


def preprocess(items: Items, cfg: DataConfig, size: tuple[int, int] | None) -> np.ndarray:
    """Decode, convert to L/RGB, pad, resize or centre-crop to `cfg.resolution`.

    `size`: for data.resize=pad, the split's common (w, h) (`first_size`). Returns
    (N, C, R, R) uint8 for the N = len(items) images; the first bad image raises.
    """
    images, _, _ = preprocess_kept(items, cfg, size, skip=False)
    return images


def preprocess_kept(
    items: Items, cfg: DataConfig, size: tuple[int, int] | None, skip: bool
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """`preprocess`, with `skip` leaving out the images that fail (undecodable, transparent,
    ...) instead of raising: (K, C, R, R) uint8 of the K kept, their indices (K,) into `items`,
    and one "<item>: <error>" per skipped image (data.bad_images: skip)."""
    r, mode = cfg.resolution, ("L" if cfg.channels == 1 else "RGB")
    out = np.zeros((len(items), cfg.channels, r, r), dtype=np.uint8)
    kept: list[int] = []
    skipped: list[str] = []
    for i in range(len(items)):
        try:
            arr = np.asarray(_prepared(items, i, cfg, mode, size), dtype=np.uint8)
        except ValueError as e:
            if not skip:
                raise
            skipped.append(str(e))
            logger.warning("data.bad_images=skip: %s", e)
            continue
        out[len(kept)] = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # HWC -> CHW
        kept.append(i)
    return out[: len(kept)], np.asarray(kept, dtype=np.int64), skipped


def _prepared(
    items: Items, i: int, cfg: DataConfig, mode: str, size: tuple[int, int] | None
) -> Image.Image:
    """Item i decoded in `mode` and brought to `cfg.resolution` by `cfg.resize`."""
    name, r = items.describe(i), cfg.resolution
    img = to_mode(items.load(i), mode, name)
    if cfg.resize == "resize":
        return img.resize((r, r), Image.Resampling.BILINEAR) if img.size != (r, r) else img
    if cfg.resize == "center_crop":
        return center_crop(img, r, cfg.downscale, name)
    return _pad(img, r, name, size or img.size)


def center_crop(
    img: Image.Image, r: int, downscale: str = "lanczos", name: str = ""
) -> Image.Image:
    """The official 256^2 preprocessing: the centre square of side min(w, h), then r x r.

    Crop rows/cols [(h - s) // 2, (h + s) // 2) as StyleGAN's `dataset_tool.py create_lsun`
    (the paper's LSUN TFRecords for hojonathanho/diffusion), then `downscale`: "lanczos", PIL's
    antialiased resize `ANTIALIAS` (= LANCZOS) as create_lsun; or "box", the repeated 2x2 average
    of progressive_growing_of_gans' CelebA-HQ export (`box_downscale`; s must be r * 2^k).
    No resize when the square is r x r.
    """
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    img = img.crop((left, top, left + s, top + s)) if (w, h) != (s, s) else img
    if s == r:
        return img
    if downscale == "box":
        return Image.fromarray(box_downscale(np.asarray(img), r, name))
    return img.resize((r, r), Image.Resampling.LANCZOS)


def box_downscale(image: np.ndarray, r: int, name: str = "image") -> np.ndarray:
    """(s, s[, C]) uint8 -> (r, r[, C]) uint8 by repeated 2x2 box averages, s = r * 2^k.

    As `TFRecordExporter.add_image` of progressive_growing_of_gans' dataset_tool.py, which made
    the CelebA-HQ levels the paper's 256^2 model trained on: float32 averages level by level
    ((a00 + a01 + a10 + a11) * 0.25), rounded (np.rint) and clipped to uint8 only at the end.
    """
    s = image.shape[0]
    if s < r or s % r or (s // r) & (s // r - 1):
        raise ValueError(
            f"{name}: square side {s} is not {r} x a power of 2; data.downscale: box halves it "
            "(CelebA-HQ: 1024 -> 512 -> 256); use data.downscale: lanczos for other sizes"
        )
    x = image.astype(np.float32)
    while x.shape[0] > r:
        x = (x[0::2, 0::2] + x[0::2, 1::2] + x[1::2, 0::2] + x[1::2, 1::2]) * 0.25
    return np.rint(x).clip(0, 255).astype(np.uint8)


def to_mode(img: Image.Image, mode: str, name: str) -> Image.Image:
    """`img` upright (EXIF orientation) in 8-bit `mode` ("L" or "RGB"), or ValueError naming it.

    16-bit greyscale is scaled to 8 bits (PIL's `convert` would clamp it: most pixels white);
    an alpha channel must be fully opaque (dropping real transparency would show whatever colour
    the transparent pixels hold); float images are refused.
    """
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img).astype(np.int64)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ValueError(f"{name}: {img.mode} image with values outside 0..65535")
        img = Image.fromarray(((arr * 255 + 32767) // 65535).astype(np.uint8), "L")
    elif img.mode == "F":
        raise ValueError(f"{name}: floating-point image (mode F); expected 8- or 16-bit pixels")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        alpha = np.asarray(img.convert("RGBA"))[..., 3]
        if alpha.min() < 255:
            raise ValueError(
                f"{name}: has transparent pixels (alpha min {int(alpha.min())}); expected opaque "
                "images: flatten them onto a background first"
            )
    return img.convert(mode)


def _pad(img: Image.Image, r: int, name: str, first_size: tuple[int, int]) -> Image.Image:
    """Centre `img` on a zero canvas of r x r; all images must share one size."""
    w, h = img.size
    if (w, h) != first_size:
        raise ValueError(
            f"{name}: image size {w}x{h} differs from {first_size[0]}x{first_size[1]} of the "
            "first image; set data.resize: resize to bring mixed sizes to data.resolution"
        )
    if w > r or h > r:
        raise ValueError(
            f"{name}: image size {w}x{h} is larger than data.resolution={r}; cannot pad "
            "(set data.resize: resize or a larger data.resolution)"
        )
    canvas = Image.new(img.mode, (r, r), 0)
    canvas.paste(img, ((r - w) // 2, (r - h) // 2))
    return canvas

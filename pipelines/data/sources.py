"""Dataset sources (digits, MNIST, Fashion-MNIST, CIFAR-10, image folders) -> uint8 arrays."""

from __future__ import annotations

import contextlib
import functools
import gzip
import io
import logging
import pickle
import struct
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from ddpm_core.config import ConfigError
from ddpm_core.rng import SeedPurpose
from pipelines.artifacts.shards import SourceData, Split
from pipelines.config import DataConfig

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
CIFAR10_CLASSES = (  # batches.meta order
    ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
)
MNIST_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
MAX_IMAGE_BYTES = 64 * 2**20  # one image member of a zip, uncompressed


# A raw split: named images (PIL) in a fixed order, read lazily, plus labels.
RawItem = tuple[str, Callable[[], Image.Image]]
RawSplits = dict[str, tuple[list[RawItem], np.ndarray]]
Loaded = tuple[RawSplits, list[str], str]  # raw splits, class names, description


def load_source(cfg: DataConfig, seed: int) -> SourceData:
    """Read `cfg.source`, split it, cap it and bring it to (channels, resolution, resolution)."""
    if cfg.source == "digits":
        raw, classes, desc = _digits(cfg, seed)
    elif cfg.source in MNIST_FOLDERS:
        raw, classes, desc = _mnist_like(cfg)
    elif cfg.source == "cifar10":
        raw, classes, desc = _cifar10(cfg)
    else:
        with _ImageTree.open(_require_root(cfg)) as tree:  # decode while the zip is open
            return _finish(*_image_folder(tree, cfg, seed), cfg, seed)
    return _finish(raw, classes, desc, cfg, seed)


def _finish(
    raw: RawSplits,
    classes: list[str],
    desc: str,
    cfg: DataConfig,
    seed: int,
) -> SourceData:
    if not raw["train"][0]:
        raise ValueError(f"data.source={cfg.source}: the train split is empty ({desc})")
    splits = {}
    for name, (items, labels) in raw.items():
        keep = cap_indices(len(items), cfg.max_images, seed)
        images = preprocess([items[i] for i in keep], cfg)
        splits[name] = Split(images, labels[keep].astype(np.int64))
    return SourceData(splits, classes, desc)


def split_indices(
    n: int, test_fraction: float, seed: int, where: str = "the pool"
) -> tuple[np.ndarray, np.ndarray]:
    """Fixed (train, test) index split by a seeded permutation; both kept in natural order.

    ValueError naming `where` when either split would be empty (checked before any shard is
    written: FID against the test split and the NLL need test images).
    """
    perm = np.random.default_rng([seed, SeedPurpose.DATA_SPLIT]).permutation(n)
    n_test = int(round(n * test_fraction))
    if n_test < 1 or n_test >= n:
        raise ValueError(
            f"data.test_fraction={test_fraction}: {where} of {n} images gives {n_test} test and "
            f"{n - n_test} train images; expected at least one of each (raise or lower "
            "data.test_fraction, or add images)"
        )
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def cap_indices(n: int, max_images: int | None, seed: int) -> np.ndarray:
    """All of range(n), or a seeded subset of `max_images` in natural order (mixes classes)."""
    if max_images is None or n <= max_images:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, SeedPurpose.DATA_CAP]).permutation(n)[:max_images])


# ----------------------------------------------------------------------------------------------
# Preprocessing


def preprocess(items: Sequence[RawItem], cfg: DataConfig) -> np.ndarray:
    """Decode, convert to L/RGB, pad or resize to `cfg.resolution`: (N, C, R, R) uint8."""
    r, mode = cfg.resolution, ("L" if cfg.channels == 1 else "RGB")
    out = np.zeros((len(items), cfg.channels, r, r), dtype=np.uint8)
    first_size: tuple[int, int] | None = None
    for i, (name, load) in enumerate(items):
        img = to_mode(load(), mode, name)
        if cfg.resize == "resize":
            img = img.resize((r, r), Image.Resampling.BILINEAR) if img.size != (r, r) else img
        else:
            first_size = first_size or img.size
            img = _pad(img, r, name, first_size)
        arr = np.asarray(img, dtype=np.uint8)
        out[i] = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # (H,W,C) -> (C,H,W)
    return out


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


def _array_items(arrays: np.ndarray, prefix: str) -> list[RawItem]:
    """(N, H, W) or (N, H, W, 3) uint8 -> lazily converted PIL images named prefix[i]."""
    return [(f"{prefix}[{i}]", functools.partial(Image.fromarray, a)) for i, a in enumerate(arrays)]


# ----------------------------------------------------------------------------------------------
# Array sources


def _digits(cfg: DataConfig, seed: int) -> Loaded:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    targets = np.asarray(bunch.target, dtype=np.int64)
    train, test = split_indices(len(pixels), cfg.test_fraction, seed, "scikit-learn digits")
    raw = {
        "train": (_array_items(pixels[train], "digits/train"), targets[train]),
        "test": (_array_items(pixels[test], "digits/test"), targets[test]),
    }
    return raw, [str(d) for d in range(10)], "scikit-learn load_digits (8x8, 1797 images)"


def _require_root(cfg: DataConfig) -> Path:
    if cfg.root is None:
        raise ConfigError(f"data.root: got None, expected a folder for data.source={cfg.source}")
    return Path(cfg.root).expanduser()


def _mnist_like(cfg: DataConfig) -> Loaded:
    import torchvision

    root = _require_root(cfg)
    cls = getattr(torchvision.datasets, MNIST_FOLDERS[cfg.source])
    raw_dir = root / MNIST_FOLDERS[cfg.source] / "raw"
    names = [f"{p}-{k}-ubyte" for p in ("train", "t10k") for k in ("images-idx3", "labels-idx1")]
    if cfg.download and not all(_find_idx(raw_dir, n) for n in names):
        cls(str(root), train=True, download=True)  # fetches all four files into raw_dir
    raw: RawSplits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = _read_idx(_idx_path(raw_dir, f"{prefix}-images-idx3-ubyte", cfg), 3)
        labels = _read_idx(_idx_path(raw_dir, f"{prefix}-labels-idx1-ubyte", cfg), 1)
        if len(images) != len(labels):
            raise ValueError(f"{raw_dir}/{prefix}-*: {len(images)} images but {len(labels)} labels")
        raw[split] = (_array_items(images, f"{raw_dir}/{prefix}"), labels.astype(np.int64))
    classes = [str(c) for c in cls.classes]
    return raw, classes, f"torchvision {cls.__name__} from {root}"


def _find_idx(raw_dir: Path, name: str) -> Path | None:
    for p in (raw_dir / name, raw_dir / f"{name}.gz"):
        if p.is_file():
            return p
    return None


def _idx_path(raw_dir: Path, name: str, cfg: DataConfig) -> Path:
    path = _find_idx(raw_dir, name)
    if path is None:
        raise FileNotFoundError(
            f"data.source={cfg.source}: {raw_dir / name}[.gz] not found; expected the torchvision "
            f"layout <root>/{raw_dir.parent.name}/raw/{{train,t10k}}-{{images-idx3,labels-idx1}}"
            f"-ubyte[.gz] under data.root={cfg.root}, or set data.download: true (needs network)"
        )
    return path


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file (MNIST format, optionally gzipped) of unsigned bytes with `ndim` dims."""
    try:
        data = path.read_bytes()
        data = gzip.decompress(data) if path.suffix == ".gz" else data
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot read IDX file: {e}") from None
    if len(data) < 4 + 4 * ndim or data[:4] != bytes([0, 0, 0x08, ndim]):
        raise ValueError(f"{path}: not an IDX ubyte file with {ndim} dims (bad header)")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but holds {body.size} bytes (truncated?)")
    return body.reshape(dims)


def _cifar10(cfg: DataConfig) -> Loaded:
    root = _require_root(cfg)
    folder = root / "cifar-10-batches-py"
    files = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    if cfg.download and not all((folder / f).is_file() for f in sum(files.values(), [])):
        import torchvision

        torchvision.datasets.CIFAR10(str(root), train=True, download=True)
    raw: RawSplits = {}
    for split, names in files.items():
        batches = [_read_cifar_batch(folder / n, cfg) for n in names]
        images = np.concatenate([b[0] for b in batches])
        labels = np.concatenate([b[1] for b in batches])
        raw[split] = (_array_items(images, f"{folder}/{split}"), labels)
    return raw, list(CIFAR10_CLASSES), f"CIFAR-10 python batches from {folder}"


# What the official batches (and numpy pickles of them) need to unpickle; anything else, e.g. a
# `__reduce__` that calls os.system, is refused: a batch file must not run code.
CIFAR_PICKLE_GLOBALS = frozenset(
    [(m, "_reconstruct") for m in ("numpy.core.multiarray", "numpy._core.multiarray")]
    + [(m, "scalar") for m in ("numpy.core.multiarray", "numpy._core.multiarray")]
    + [(m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric")]
    + [("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")]
)


class _DataOnlyUnpickler(pickle.Unpickler):
    """An unpickler that builds dicts, lists, strings, numbers and numpy arrays, nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in CIFAR_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name} (only numpy arrays are expected; a batch file "
                "that references other code is not an official CIFAR-10 batch)"
            )
        return super().find_class(module, name)


def _read_cifar_batch(path: Path, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch: (N, 32, 32, 3) uint8 images and (N,) int64 labels."""
    if not path.is_file():
        raise FileNotFoundError(
            f"data.source=cifar10: {path} not found; expected the torchvision layout "
            "<root>/cifar-10-batches-py/{data_batch_1..5,test_batch} (unpack "
            f"cifar-10-python.tar.gz into data.root={cfg.root}), or set data.download: true "
            "(needs network)"
        )
    try:
        with path.open("rb") as f:
            entry = _DataOnlyUnpickler(f, encoding="latin1").load()  # latin1: as torchvision
        data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64)
    except Exception as e:  # any unpickling/shape problem: name the file
        raise ValueError(f"{path}: not a CIFAR-10 python batch: {e}") from None
    if len(labels) != len(data):
        raise ValueError(f"{path}: {len(data)} images but {len(labels)} labels")
    return data.transpose(0, 2, 3, 1), labels  # (N,3,32,32) -> (N,32,32,3)


# ----------------------------------------------------------------------------------------------
# Image folders and zip files


class _ImageTree:
    """Image files under a folder or inside a .zip (read in place), by relative posix path."""

    def __init__(self, root: Path, names: list[str], read: Callable[[str], bytes]) -> None:
        self.root, self.names, self.read = root, names, read

    @classmethod
    @contextlib.contextmanager
    def open(cls, root: Path) -> Iterator[_ImageTree]:
        if not root.exists():
            raise FileNotFoundError(f"data.root: {root} does not exist (data.source=image_folder)")
        if root.is_dir():
            names = _image_names(
                [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
            )
            inside = root.resolve()
            for n in names:  # a link may point anywhere: only files inside the folder are read
                if not (root / n).resolve().is_relative_to(inside):
                    raise ValueError(
                        f"{root / n}: a symlink to {(root / n).resolve()}, outside data.root="
                        f"{root}; refused (copy the file into the folder)"
                    )
            yield cls(root, names, lambda n: (root / n).read_bytes())
            return
        try:
            zf = zipfile.ZipFile(root)
        except (zipfile.BadZipFile, OSError) as e:
            raise ValueError(f"{root}: not a folder or a readable .zip file: {e}") from None
        with zf:
            names = _image_names(zf.namelist())
            for n in names:  # the declared size bounds what zf.read inflates
                size = zf.getinfo(n).file_size
                if size > MAX_IMAGE_BYTES:
                    raise ValueError(
                        f"{root}:{n}: {size} bytes uncompressed, over the {MAX_IMAGE_BYTES} "
                        "byte cap for one image member (a zip bomb or not an image)"
                    )
            yield cls(root, names, zf.read)

    def describe(self, name: str) -> str:
        return f"{self.root}:{name}" if self.root.is_file() else str(self.root / name)

    def loader(self, name: str) -> Callable[[], Image.Image]:
        def load() -> Image.Image:
            try:
                img = Image.open(io.BytesIO(self.read(name)))
                img.load()
            except Exception as e:  # PIL raises many types for corrupt data
                raise ValueError(f"{self.describe(name)}: cannot read image: {e}") from None
            return img

        return load


def _image_names(names: list[str]) -> list[str]:
    def visible(n: str) -> bool:
        return not any(part.startswith(".") or part == "__MACOSX" for part in n.split("/"))

    return sorted(n for n in names if n.lower().endswith(IMAGE_SUFFIXES) and visible(n))


def _image_folder(tree: _ImageTree, cfg: DataConfig, seed: int) -> Loaded:
    """train/ and test/ top-level folders if both exist, else one pool split by test_fraction."""
    if not tree.names:
        raise ValueError(f"{tree.root}: no image files ({', '.join(IMAGE_SUFFIXES)}) found")
    tops = {n.split("/", 1)[0] for n in tree.names if "/" in n}
    if {"train", "test"} <= tops:
        pools = {s: [n for n in tree.names if n.startswith(f"{s}/")] for s in ("train", "test")}
        rel = {s: [n.split("/", 1)[1] for n in pools[s]] for s in pools}
        how = "train/ and test/ folders"
    else:
        only = [
            f"{s}/" for s in ("train", "test") if all(n.startswith(f"{s}/") for n in tree.names)
        ]
        prefix = only[0] if only else ""  # e.g. a zip holding only test/<class>/...
        pool = [n for n in tree.names if n.startswith(prefix)]
        train, test = split_indices(
            len(pool), cfg.test_fraction, seed, tree.describe(prefix or ".")
        )
        pools = {"train": [pool[i] for i in train], "test": [pool[i] for i in test]}
        rel = {s: [n[len(prefix) :] for n in pools[s]] for s in pools}
        how = f"{prefix or 'all images'} split by data.test_fraction={cfg.test_fraction}"
    classes = sorted({_class_of(n) for names in rel.values() for n in names})
    label = {c: i for i, c in enumerate(classes)}
    raw = {
        s: (
            [(tree.describe(n), tree.loader(n)) for n in pools[s]],
            np.array([label[_class_of(n)] for n in rel[s]], dtype=np.int64),
        )
        for s in ("train", "test")
    }
    logger.info("image_folder %s: %d classes, %s", tree.root, len(classes), how)
    return raw, classes, f"image folder {tree.root} ({how})"


def _class_of(relative: str) -> str:
    """The first folder under the split root, or '' for images directly in it."""
    return relative.split("/", 1)[0] if "/" in relative else ""

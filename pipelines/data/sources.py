"""Dataset sources (digits, MNIST, Fashion-MNIST, CIFAR-10, image folders, LSUN LMDB; Parquet
in `data.parquet`).

`open_source` lists a source lazily (`LazySource`: per split the items in stored order and
their labels, nothing decoded); `preprocess` decodes a few items (one shard) to uint8 arrays.
`load_source` decodes everything at once (tests, small sets).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import pickle
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

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


# Lazy splits: an ordered list of items (names + labels) and a picklable way to load item i
# (`Items`: paths and indices, never open handles), so a Ray task re-opens what it reads.
RawSplits = dict[str, tuple["Items", np.ndarray]]
Loaded = tuple[RawSplits, list[str], str]  # raw splits, class names, description


@dataclass(frozen=True)
class LazySplit:
    """One split before decoding: `items` in stored order and their labels (N,) int64."""

    items: Items
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.items)

    def take(self, index: np.ndarray | range) -> LazySplit:
        """The items at `index` (in that order), as a new split (small: one shard's refs)."""
        idx = np.asarray(index, dtype=np.int64)
        return LazySplit(self.items.take(idx), self.labels[idx])


@dataclass(frozen=True)
class LazySource:
    """Every split of a source, not decoded, with class names (label i is `classes[i]`)."""

    splits: dict[str, LazySplit]
    classes: list[str]
    description: str


def open_source(cfg: DataConfig, seed: int) -> LazySource:
    """List `cfg.source`, split it and cap it; nothing is decoded (item lists only).

    Item order is the stored order of the shards (`split_indices`, `cap_indices`).
    """
    if cfg.source == "digits":
        raw, classes, desc = _digits(cfg, seed)
    elif cfg.source in MNIST_FOLDERS:
        raw, classes, desc = _mnist_like(cfg)
    elif cfg.source == "cifar10":
        raw, classes, desc = _cifar10(cfg)
    elif cfg.source == "lsun":
        raw, classes, desc = _lsun(cfg, seed)
    elif cfg.source == "parquet":
        from pipelines.data.parquet import open_parquet  # imports this module: imported here

        raw, classes, desc = open_parquet(cfg, seed)
    else:
        raw, classes, desc = _image_folder(_tree_items(require_root(cfg)), cfg, seed)
    if not len(raw["train"][0]):
        raise ValueError(f"data.source={cfg.source}: the train split is empty ({desc})")
    splits = {}
    for name, (items, labels) in raw.items():
        if name != "train" and not len(items):
            continue  # data.test_fraction 0: no test split at all (not an empty one)
        keep = cap_indices(len(items), cfg.max_images, seed)
        splits[name] = LazySplit(items, labels.astype(np.int64)).take(keep)
    return LazySource(splits, classes, desc)


def load_source(cfg: DataConfig, seed: int) -> SourceData:
    """`open_source`, every split decoded and brought to (channels, resolution, resolution).

    Holds the whole dataset in memory: for tests and small sets; the shard stage streams.
    """
    lazy = open_source(cfg, seed)
    splits = {
        name: Split(preprocess(s.items, cfg, first_size(s, cfg)), s.labels)
        for name, s in lazy.splits.items()
    }
    return SourceData(splits, lazy.classes, lazy.description)


def split_indices(
    n: int, test_fraction: float, seed: int, where: str = "the pool"
) -> tuple[np.ndarray, np.ndarray]:
    """Fixed (train, test) index split by a seeded permutation; both kept in natural order.

    `test_fraction` 0: everything is train (no test split). Otherwise ValueError naming `where`
    when either split would be empty (checked before any shard is written: FID against the test
    split and the NLL need test images).
    """
    if test_fraction == 0:  # no test split: train on the whole pool (the official 256^2 runs)
        return np.arange(n), np.zeros(0, dtype=np.int64)
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
    kept, skipped = [], []
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


# ----------------------------------------------------------------------------------------------
# Items: what a split lists, and how one item is loaded (picklable: re-opened in a Ray task)


class Items(Protocol):
    """N images in a fixed order, loaded one at a time; `take` selects a (small) subset."""

    def __len__(self) -> int: ...

    def load(self, i: int) -> Image.Image: ...

    def describe(self, i: int) -> str: ...

    def take(self, index: np.ndarray) -> Items: ...

    def identity(self) -> str:
        """A digest of what decides the pixels: names, and sizes/mtimes or bytes of the files."""
        ...


@dataclass(frozen=True)
class ArrayItems:
    """Images of an array (N, H, W) or (N, H, W, 3) uint8 (MNIST idx, CIFAR batches, digits).

    Bounded by the fixed file sizes of those sources; `take` copies the selected rows only.
    """

    arrays: np.ndarray
    prefix: str
    numbers: np.ndarray  # (N,) the index shown in names: `prefix[numbers[i]]`

    @classmethod
    def of(cls, arrays: np.ndarray, prefix: str) -> ArrayItems:
        return cls(arrays, prefix, np.arange(len(arrays)))

    def __len__(self) -> int:
        return len(self.arrays)

    def load(self, i: int) -> Image.Image:
        return Image.fromarray(self.arrays[i])

    def describe(self, i: int) -> str:
        return f"{self.prefix}[{int(self.numbers[i])}]"

    def take(self, index: np.ndarray) -> ArrayItems:
        return ArrayItems(self.arrays[index], self.prefix, self.numbers[index])

    def identity(self) -> str:
        return digest(self.prefix.encode(), np.ascontiguousarray(self.arrays).tobytes())


def decode_image(data: bytes, where: str) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:  # PIL raises many types for corrupt data
        raise ValueError(f"{where}: cannot read image: {e}") from None
    return img


def digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def stat_bytes(path: Path) -> bytes:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}".encode()


@dataclass(frozen=True)
class FileItems:
    """Image files `root/names[i]` (relative posix paths)."""

    root: str
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)

    def load(self, i: int) -> Image.Image:
        path = Path(self.root) / self.names[i]
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ValueError(f"{path}: cannot read image: {e}") from None
        return decode_image(data, str(path))

    def describe(self, i: int) -> str:
        return str(Path(self.root) / self.names[i])

    def take(self, index: np.ndarray) -> FileItems:
        return FileItems(self.root, [self.names[int(i)] for i in index])

    def identity(self) -> str:
        root = Path(self.root)
        return digest(*(p for n in self.names for p in (n.encode(), stat_bytes(root / n))))


@dataclass(frozen=True)
class ZipItems:
    """Image members `names[i]` of the zip file `path`, read in place (opened once per process
    and object, never pickled: a Ray task re-opens the zip)."""

    path: str
    names: list[str]
    _zip: list[zipfile.ZipFile] = field(default_factory=list, compare=False, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "names": self.names}

    def __setstate__(self, state: dict[str, Any]) -> None:
        object.__setattr__(self, "path", state["path"])
        object.__setattr__(self, "names", state["names"])
        object.__setattr__(self, "_zip", [])

    def __len__(self) -> int:
        return len(self.names)

    def load(self, i: int) -> Image.Image:
        if not self._zip:
            self._zip.append(zipfile.ZipFile(self.path))
        return decode_image(self._zip[0].read(self.names[i]), self.describe(i))

    @property
    def root(self) -> str:
        return self.path

    def describe(self, i: int) -> str:
        return f"{self.path}:{self.names[i]}"

    def take(self, index: np.ndarray) -> ZipItems:
        return ZipItems(self.path, [self.names[int(i)] for i in index])

    def identity(self) -> str:
        return digest(stat_bytes(Path(self.path)), *(n.encode() for n in self.names))


# ----------------------------------------------------------------------------------------------
# Array sources


def _digits(cfg: DataConfig, seed: int) -> Loaded:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    targets = np.asarray(bunch.target, dtype=np.int64)
    train, test = split_indices(len(pixels), cfg.test_fraction, seed, "scikit-learn digits")
    raw: RawSplits = {
        "train": (ArrayItems.of(pixels[train], "digits/train"), targets[train]),
        "test": (ArrayItems.of(pixels[test], "digits/test"), targets[test]),
    }
    return raw, [str(d) for d in range(10)], "scikit-learn load_digits (8x8, 1797 images)"


def require_root(cfg: DataConfig) -> Path:
    if cfg.root is None:
        raise ConfigError(f"data.root: got None, expected a folder for data.source={cfg.source}")
    return Path(cfg.root).expanduser()


def _mnist_like(cfg: DataConfig) -> Loaded:
    import torchvision

    root = require_root(cfg)
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
        raw[split] = (ArrayItems.of(images, f"{raw_dir}/{prefix}"), labels.astype(np.int64))
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
    root = require_root(cfg)
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
        raw[split] = (ArrayItems.of(images, f"{folder}/{split}"), labels)
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


def _tree_items(root: Path) -> FileItems | ZipItems:
    """The image files under a folder or inside a .zip (read in place), by relative posix path.

    Only names are listed (and checked: no symlink out of the folder, no oversized zip member).
    """
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
        return FileItems(str(root), names)
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
    return ZipItems(str(root), names)


def _image_names(names: list[str]) -> list[str]:
    def visible(n: str) -> bool:
        return not any(part.startswith(".") or part == "__MACOSX" for part in n.split("/"))

    return sorted(n for n in names if n.lower().endswith(IMAGE_SUFFIXES) and visible(n))


def _tree_where(tree: FileItems | ZipItems, name: str) -> str:
    return f"{tree.root}:{name}" if isinstance(tree, ZipItems) else str(Path(tree.root) / name)


def _image_folder(tree: FileItems | ZipItems, cfg: DataConfig, seed: int) -> Loaded:
    """train/ and test/ top-level folders if both exist, else one pool split by test_fraction."""
    root, names = tree.root, tree.names
    if not names:
        raise ValueError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)}) found")
    tops = {n.split("/", 1)[0] for n in names if "/" in n}
    if {"train", "test"} <= tops:
        pools = {
            s: np.array([i for i, n in enumerate(names) if n.startswith(f"{s}/")], dtype=np.int64)
            for s in ("train", "test")
        }
        rel = {s: [names[i].split("/", 1)[1] for i in pools[s]] for s in pools}
        how = "train/ and test/ folders"
    else:
        only = [f"{s}/" for s in ("train", "test") if all(n.startswith(f"{s}/") for n in names)]
        prefix = only[0] if only else ""  # e.g. a zip holding only test/<class>/...
        pool = np.array([i for i, n in enumerate(names) if n.startswith(prefix)], dtype=np.int64)
        train, test = split_indices(
            len(pool), cfg.test_fraction, seed, _tree_where(tree, prefix or ".")
        )
        pools = {"train": pool[train], "test": pool[test]}
        rel = {s: [names[i][len(prefix) :] for i in pools[s]] for s in pools}
        how = f"{prefix or 'all images'} split by data.test_fraction={cfg.test_fraction}"
    classes = sorted({_class_of(n) for rels in rel.values() for n in rels})
    label = {c: i for i, c in enumerate(classes)}
    raw: RawSplits = {
        s: (
            tree.take(pools[s]),
            np.array([label[_class_of(n)] for n in rel[s]], dtype=np.int64),
        )
        for s in ("train", "test")
    }
    logger.info("image_folder %s: %d classes, %s", root, len(classes), how)
    return raw, classes, f"image folder {root} ({how})"


def _class_of(relative: str) -> str:
    """The first folder under the split root, or '' for images directly in it."""
    return relative.split("/", 1)[0] if "/" in relative else ""


# ----------------------------------------------------------------------------------------------
# LSUN: the distributed LMDB (data.mdb, lock.mdb) of encoded images (webp/jpeg) keyed by id


@dataclass(frozen=True)
class LmdbItems:
    """Values `keys[i]` of the LMDB environment in folder `path` (encoded images).

    Memory: the key list only (LSUN's ids are 40-byte hex strings: ~90 bytes each as Python
    bytes, ~270 MiB for Bedroom's 3M). The environment is opened read-only without the lock
    file (lock=False: the distributed LMDB is never written), once per process (`_lmdb_env`;
    py-lmdb refuses a second open of one environment), never pickled: a Ray task re-opens it.
    """

    path: str
    keys: list[bytes]

    def __len__(self) -> int:
        return len(self.keys)

    def load(self, i: int) -> Image.Image:
        with _lmdb_env(self.path).begin(write=False) as txn:
            value = txn.get(self.keys[i])
        if value is None:
            raise ValueError(
                f"{self.describe(i)}: key not found in the LMDB (changed since listed?)"
            )
        return decode_image(bytes(value), self.describe(i))

    def describe(self, i: int) -> str:
        return f"{self.path}:{self.keys[i].decode('utf-8', 'backslashreplace')}"

    def take(self, index: np.ndarray) -> LmdbItems:
        return LmdbItems(self.path, [self.keys[int(i)] for i in index])

    def identity(self) -> str:
        return digest(stat_bytes(Path(self.path) / "data.mdb"), *self.keys)


def _open_lmdb(folder: Path) -> Any:
    import lmdb

    if not folder.is_dir():
        raise FileNotFoundError(
            f"data.root: {folder} is not a folder; expected an LSUN LMDB folder holding data.mdb "
            "(e.g. church_outdoor_train_lmdb/, unpacked from church_outdoor_train_lmdb.zip)"
        )
    if not (folder / "data.mdb").is_file():
        raise FileNotFoundError(
            f"{folder / 'data.mdb'} not found; expected an LSUN LMDB folder (data.mdb, lock.mdb)"
        )
    try:
        return lmdb.open(str(folder), readonly=True, lock=False, readahead=False, meminit=False)
    except lmdb.Error as e:
        raise ValueError(f"{folder}: not a readable LMDB environment: {e}") from None


_LMDB_ENVS: dict[str, Any] = {}  # this process's open environments, by resolved folder


def _lmdb_env(path: str) -> Any:
    key = str(Path(path).resolve())
    if key not in _LMDB_ENVS:
        _LMDB_ENVS[key] = _open_lmdb(Path(path))
    return _LMDB_ENVS[key]


def _lsun_keys(folder: Path) -> list[bytes]:
    """Every key in LMDB cursor order (sorted bytes order), values not read."""
    with _lmdb_env(str(folder)).begin(write=False) as txn:
        return [bytes(k) for k in txn.cursor().iternext(keys=True, values=False)]


def _lsun(cfg: DataConfig, seed: int) -> Loaded:
    """One LSUN category: keys in sorted order split by data.test_fraction (LSUN's train LMDBs
    have no test split); every label 0, the one class named after the folder."""
    root = require_root(cfg)
    keys = _lsun_keys(root)
    if not keys:
        raise ValueError(f"{root}: the LMDB holds no entries; expected encoded LSUN images")
    train, test = split_indices(len(keys), cfg.test_fraction, seed, f"the LMDB {root}")
    items = LmdbItems(str(root), keys)
    raw: RawSplits = {
        "train": (items.take(train), np.zeros(len(train), dtype=np.int64)),
        "test": (items.take(test), np.zeros(len(test), dtype=np.int64)),
    }
    name = root.resolve().name
    logger.info("lsun %s: %d images", root, len(keys))
    return raw, [name], f"LSUN LMDB {root} ({len(keys)} images split by data.test_fraction)"

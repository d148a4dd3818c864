"""Sources on small real data and fixture files in the real on-disk formats."""

from __future__ import annotations

import dataclasses
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from ddpm_core.config import ConfigError
from pipelines.config import DataConfig
from pipelines.data.sources import (
    ZipItems,
    center_crop,
    load_source,
    open_source,
    preprocess,
    split_indices,
)
from tests.fixtures import (
    write_cifar10_batches,
    write_image_folder,
    write_lsun_lmdb,
    write_mnist_raw,
    write_png,
)
from tests.helpers import SHARED_DATA


def cfg(**kw: object) -> DataConfig:
    base = DataConfig(
        source="digits",
        root=None,
        raw="data/raw",
        download=False,
        resolution=8,
        channels=1,
        resize="pad",
        max_images=None,
        shard_size=16,
        test_fraction=0.1,
        random_flip=False,
        shard_workers=1,
        image_column="image",
        label_column="label",
        downscale="lanczos",
        bad_images="fail",
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# digits


def test_digits_values_labels_and_split() -> None:
    data = load_source(cfg(), seed=0)
    train, test = data.splits["train"], data.splits["test"]
    assert train.images.shape == (1617, 1, 8, 8) and test.images.shape == (180, 1, 8, 8)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
    bunch = load_digits()
    tr, te = split_indices(1797, 0.1, 0)
    assert not set(tr) & set(te) and len(tr) + len(te) == 1797
    expected = np.rint(bunch.images[te] * 255 / 16).astype(np.uint8)  # 0..16 -> 0..255
    np.testing.assert_array_equal(test.images[:, 0], expected)
    np.testing.assert_array_equal(test.labels, bunch.target[te])
    assert train.images.max() == 255 and data.classes == [str(d) for d in range(10)]


def test_split_depends_on_seed_only() -> None:
    a, b, c = split_indices(100, 0.2, 0), split_indices(100, 0.2, 0), split_indices(100, 0.2, 1)
    np.testing.assert_array_equal(a[1], b[1])
    assert len(a[1]) == 20 and not np.array_equal(a[1], c[1])


def test_digits_pad_centres_with_zeros() -> None:
    padded = load_source(cfg(resolution=12, max_images=20), seed=0).splits["train"].images
    plain = load_source(cfg(resolution=8, max_images=20), seed=0).splits["train"].images
    assert padded.shape == (20, 1, 12, 12)
    np.testing.assert_array_equal(padded[:, :, 2:10, 2:10], plain)
    assert padded[:, :, :2].max() == 0 and padded[:, :, :, 10:].max() == 0


def test_digits_resize_and_rgb() -> None:
    data = load_source(cfg(resolution=16, resize="resize", channels=3, max_images=10), seed=0)
    x = data.splits["train"].images
    assert x.shape == (10, 3, 16, 16)
    np.testing.assert_array_equal(x[:, 0], x[:, 2])  # grey -> RGB keeps R = G = B
    assert x.std() > 0


def test_max_images_caps_each_split_with_mixed_classes() -> None:
    data = load_source(cfg(max_images=30), seed=0)
    assert len(data.splits["train"].labels) == 30 and len(data.splits["test"].labels) == 30
    assert len(set(data.splits["train"].labels.tolist())) > 5


# ----------------------------------------------------------------------------------------------
# torchvision layouts


@pytest.mark.parametrize(
    ("source", "folder", "gz"),
    [("mnist", "MNIST", False), ("mnist", "MNIST", True), ("fashion_mnist", "FashionMNIST", True)],
)
def test_mnist_like_fixture(tmp_path: Path, source: str, folder: str, gz: bool) -> None:
    truth = write_mnist_raw(tmp_path, folder, n_train=7, n_test=3, gz=gz)
    data = load_source(cfg(source=source, root=str(tmp_path), resolution=28), seed=0)
    for split in ("train", "test"):
        np.testing.assert_array_equal(data.splits[split].images[:, 0], truth[split][0])
        np.testing.assert_array_equal(data.splits[split].labels, truth[split][1])
    assert len(data.classes) == 10


def test_cifar10_fixture(tmp_path: Path) -> None:
    truth = write_cifar10_batches(tmp_path, per_batch=2)
    data = load_source(cfg(source="cifar10", root=str(tmp_path), resolution=32, channels=3), 0)
    assert data.splits["train"].images.shape == (10, 3, 32, 32)
    for split in ("train", "test"):
        np.testing.assert_array_equal(data.splits[split].images, truth[split][0])
        np.testing.assert_array_equal(data.splits[split].labels, truth[split][1])
    assert data.classes[0] == "airplane"


def test_missing_torchvision_files_name_the_layout(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load_source(cfg(source="cifar10", root=str(tmp_path), resolution=32), 0)
    with pytest.raises(FileNotFoundError, match="MNIST/raw"):
        load_source(cfg(source="mnist", root=str(tmp_path), resolution=28), 0)
    with pytest.raises(ConfigError, match="data.root"):
        load_source(cfg(source="mnist", resolution=28), 0)


def test_corrupt_torchvision_files_named(tmp_path: Path) -> None:
    write_mnist_raw(tmp_path, "MNIST", n_train=4, n_test=2)
    bad = tmp_path / "MNIST/raw/t10k-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:100])  # truncated
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.*truncated"):
        load_source(cfg(source="mnist", root=str(tmp_path), resolution=28), 0)
    write_cifar10_batches(tmp_path / "c", per_batch=1)
    (tmp_path / "c/cifar-10-batches-py/test_batch").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="test_batch"):
        load_source(cfg(source="cifar10", root=str(tmp_path / "c"), resolution=32), 0)


# ----------------------------------------------------------------------------------------------
# image folders


def test_image_folder_with_split_and_class_folders(tmp_path: Path) -> None:
    train = write_image_folder(tmp_path, {"cat": 2, "dog": 3}, split="train")
    test = write_image_folder(tmp_path, {"cat": 1, "dog": 1}, split="test", seed=1)
    data = load_source(cfg(source="image_folder", root=str(tmp_path), resize="pad"), 0)
    assert data.classes == ["cat", "dog"]
    got = data.splits["train"]
    np.testing.assert_array_equal(got.labels, [0, 0, 1, 1, 1])
    np.testing.assert_array_equal(got.images[:, 0, 1:7, 1:7], np.stack(list(train.values())))
    np.testing.assert_array_equal(
        data.splits["test"].images[:, 0, 1:7, 1:7], np.stack(list(test.values()))
    )


def test_image_folder_unsplit_and_zip_read_in_place(tmp_path: Path) -> None:
    files = write_image_folder(tmp_path / "d", {"a": 5, "b": 5}, size=8)
    archive = tmp_path / "imgs.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for rel in files:
            zf.write(tmp_path / "d" / rel, rel)
    c = cfg(source="image_folder", test_fraction=0.2)
    from_dir = load_source(dataclasses.replace(c, root=str(tmp_path / "d")), 0)
    from_zip = load_source(dataclasses.replace(c, root=str(archive)), 0)
    assert len(from_dir.splits["train"].labels) == 8 and len(from_dir.splits["test"].labels) == 2
    for s in ("train", "test"):
        np.testing.assert_array_equal(from_dir.splits[s].images, from_zip.splits[s].images)
        np.testing.assert_array_equal(from_dir.splits[s].labels, from_zip.splits[s].labels)


def test_image_folder_bad_inputs_name_the_file(tmp_path: Path) -> None:
    write_png(tmp_path / "x/train/a.png", np.zeros((6, 6), np.uint8))
    write_png(tmp_path / "x/train/b.png", np.zeros((5, 6), np.uint8))
    write_png(tmp_path / "x/test/c.png", np.zeros((6, 6), np.uint8))
    c = cfg(source="image_folder", root=str(tmp_path / "x"), test_fraction=0.0)
    with pytest.raises(ValueError, match=r"b\.png: image size 6x5 differs"):
        load_source(c, 0)
    assert load_source(dataclasses.replace(c, resize="resize"), 0).splits["train"].images.shape == (
        2,
        1,
        8,
        8,
    )
    with pytest.raises(ValueError, match=r"a\.png: image size 6x6 is larger"):
        load_source(dataclasses.replace(c, resolution=4), 0)
    (tmp_path / "x/train/b.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match=r"b\.png: cannot read image"):
        load_source(dataclasses.replace(c, resize="resize"), 0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: no image files"):
        load_source(dataclasses.replace(c, root=str(tmp_path / "empty")), 0)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_source(dataclasses.replace(c, root=str(tmp_path / "nowhere")), 0)
    (tmp_path / "bad.zip").write_bytes(b"PK not really")
    with pytest.raises(ValueError, match="bad.zip"):
        load_source(dataclasses.replace(c, root=str(tmp_path / "bad.zip")), 0)


@pytest.mark.skipif(not (SHARED_DATA / "mnist-png.zip").is_file(), reason="no shared data")
def test_shared_mnist_png_zip() -> None:
    c = cfg(
        source="image_folder", root=str(SHARED_DATA / "mnist-png.zip"), resolution=32, max_images=50
    )
    data = load_source(c, 0)
    assert data.classes == [str(d) for d in range(10)]
    x = data.splits["train"].images
    assert x.shape == (50, 1, 32, 32) and len(data.splits["test"].labels) == 50
    assert x[:, :, :2].max() == 0 and 10 < x.mean() < 60  # zero pad; MNIST mean ~33 at 28x28
    assert len(set(data.splits["train"].labels.tolist())) > 5


@pytest.mark.skipif(not (SHARED_DATA / "cifar10-test-jpeg.zip").is_file(), reason="no shared data")
def test_shared_cifar10_jpeg_zip_test_only_is_split() -> None:
    c = cfg(
        source="image_folder",
        root=str(SHARED_DATA / "cifar10-test-jpeg.zip"),
        resolution=32,
        channels=3,
        max_images=50,
    )
    data = load_source(c, 0)
    assert data.classes[:2] == ["airplane", "automobile"] and len(data.classes) == 10
    assert data.splits["train"].images.shape == (50, 3, 32, 32)
    assert "split by data.test_fraction" in data.description


def test_a_split_that_leaves_no_test_images_is_refused_before_shards(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "d", {"a": 3}, size=8)  # 3 images in one pool
    c = cfg(source="image_folder", root=str(tmp_path / "d"), test_fraction=0.1)
    with pytest.raises(ValueError, match=r"test_fraction=0.1: .*d of 3 images gives 0 test"):
        load_source(c, 0)
    whole = load_source(dataclasses.replace(c, test_fraction=0.0), 0)  # 0: no test split
    assert list(whole.splits) == ["train"] and len(whole.splits["train"].labels) == 3
    data = load_source(dataclasses.replace(c, test_fraction=0.34), 0)
    assert (len(data.splits["train"].labels), len(data.splits["test"].labels)) == (2, 1)
    with pytest.raises(ValueError, match="digits of 1797 images gives 0 test"):
        load_source(cfg(test_fraction=0.0001), 0)


class _RunsCode:
    """A pickle payload that, loaded with plain pickle.load, would create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch.__get__(self.marker), ())  # type: ignore[return-value]


def test_cifar10_batch_that_runs_code_is_refused_unrun(tmp_path: Path) -> None:
    write_cifar10_batches(tmp_path, per_batch=1)
    marker = tmp_path / "pwned"
    evil = {"data": np.zeros((1, 3072), np.uint8), "labels": [0], "x": _RunsCode(marker)}
    (tmp_path / "cifar-10-batches-py/data_batch_3").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(ValueError, match=r"data_batch_3: not a CIFAR-10 python batch: refused"):
        load_source(cfg(source="cifar10", root=str(tmp_path), resolution=32), 0)
    assert not marker.exists()


def _folder_cfg(root: Path, **kw: object) -> DataConfig:
    return cfg(source="image_folder", root=str(root), test_fraction=0.5, **kw)


def test_16bit_png_is_scaled_not_clamped(tmp_path: Path) -> None:
    from PIL import Image

    values = np.array([[0, 257 * 100, 65535, 257 * 3]], dtype=np.uint16).repeat(4, axis=0)
    for name in ("a.png", "b.png"):
        Image.fromarray(values).save(tmp_path / name)
    assert Image.open(tmp_path / "a.png").mode.startswith("I")  # really 16-bit on disk
    data = load_source(_folder_cfg(tmp_path, resolution=4), 0)
    row = data.splits["train"].images[0, 0, 0]
    assert row.tolist() == [0, 100, 255, 3]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    from PIL import Image

    pixels = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
    exif = Image.Exif()
    exif[0x0112] = 3  # Orientation: rotate 180
    for name in ("a.png", "b.png"):
        Image.fromarray(pixels).save(tmp_path / name, exif=exif)
    data = load_source(_folder_cfg(tmp_path, resolution=4), 0)
    np.testing.assert_array_equal(data.splits["train"].images[0, 0], pixels[::-1, ::-1])


def test_alpha_opaque_is_dropped_transparent_is_refused(tmp_path: Path) -> None:
    from PIL import Image

    rgba = np.full((4, 4, 4), 255, dtype=np.uint8)
    rgba[..., 0] = 7
    for name in ("a.png", "b.png"):
        Image.fromarray(rgba).save(tmp_path / name)
    data = load_source(_folder_cfg(tmp_path, resolution=4, channels=3), 0)
    assert data.splits["train"].images[0, 0].tolist() == [[7] * 4] * 4
    rgba[0, 0, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "b.png")
    with pytest.raises(ValueError, match=r"b\.png: has transparent pixels"):
        load_source(_folder_cfg(tmp_path, resolution=4, channels=3), 0)


def test_symlinks_out_of_the_folder_and_huge_zip_members_are_refused(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "d", {"a": 2}, size=4)
    write_png(tmp_path / "secret.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "d/a/link.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(ValueError, match=r"d/a/link\.png: a symlink to .*secret\.png, outside"):
        load_source(_folder_cfg(tmp_path / "d", resolution=4), 0)
    (tmp_path / "d/a/link.png").unlink()
    (tmp_path / "d/a/inside.png").symlink_to(tmp_path / "d/a/000.png")  # inside: fine
    assert len(load_source(_folder_cfg(tmp_path / "d", resolution=4), 0).classes) == 1
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/0.png", (tmp_path / "secret.png").read_bytes())
        zf.writestr("a/1.png", bytes(65 * 2**20))  # 65 MiB of zeros, ~65 KiB compressed
    assert archive.stat().st_size < 2**20
    with pytest.raises(ValueError, match=r"bomb\.zip:a/1\.png: 68157440 bytes uncompressed"):
        load_source(_folder_cfg(archive, resolution=4), 0)


# ----------------------------------------------------------------------------------------------
# Lazy listing, data.resize: center_crop, LSUN LMDB


def test_center_crop_keeps_the_centre_square_known_answer() -> None:
    """12x8 (w x h): columns 0-1 black, 10-11 white, the centre 8x8 square 100; a 5x9 (w x h)
    image's rows 0-1 and 7-8 differ from its centre 5x5: both crops keep only the centre."""
    wide = np.full((8, 12), 100, np.uint8)
    wide[:, :2], wide[:, 10:] = 0, 255
    out = center_crop(Image.fromarray(wide), 4)  # 8x8 centre, then Lanczos 8 -> 4
    np.testing.assert_array_equal(np.asarray(out), np.full((4, 4), 100, np.uint8))
    tall = np.arange(45, dtype=np.uint8).reshape(9, 5)  # distinct rows
    same = center_crop(Image.fromarray(tall), 5)  # the square is already 5x5: no resize
    np.testing.assert_array_equal(np.asarray(same), tall[2:7])
    # The resize is PIL's antialiased Lanczos of that square (what StyleGAN's dataset_tool ran).
    rng = np.random.default_rng(0)
    pic = rng.integers(0, 256, (10, 16, 3), dtype=np.uint8)
    want = Image.fromarray(pic[:, 3:13]).resize((4, 4), Image.Resampling.LANCZOS)
    np.testing.assert_array_equal(np.asarray(center_crop(Image.fromarray(pic), 4)), want)


def test_center_crop_mode_in_preprocess(tmp_path: Path) -> None:
    wide = np.full((8, 12), 100, np.uint8)
    wide[:, :2], wide[:, 10:] = 0, 255
    for i in range(10):
        write_png(tmp_path / f"{i}.png", wide)
    c = cfg(source="image_folder", root=str(tmp_path), resize="center_crop", resolution=4)
    images = load_source(c, 0).splits["train"].images
    assert images.shape == (9, 1, 4, 4) and (images == 100).all()
    with pytest.raises(ConfigError, match="data.resize"):
        cfg(resize="crop")


def test_listing_decodes_nothing_and_items_reopen_after_pickling(tmp_path: Path) -> None:
    for i in range(12):
        write_png(tmp_path / "d" / f"{i:02d}.png", np.full((8, 8), i, np.uint8))
    train_idx, _ = split_indices(12, 0.25, 0)
    bad = f"{train_idx[-1]:02d}.png"
    (tmp_path / "d" / bad).write_bytes(b"corrupt")  # only found when decoded
    archive = tmp_path / "d.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted((tmp_path / "d").iterdir()):
            zf.write(p, p.name)
    c = cfg(source="image_folder", root=str(archive), test_fraction=0.25)
    lazy = open_source(c, 0)  # lists the zip, decodes nothing: no error yet
    train = lazy.splits["train"]
    assert isinstance(train.items, ZipItems) and len(train) == 9
    first = train.take(np.arange(2))
    want = [f"{archive}:{i:02d}.png" for i in train_idx[:2]]
    assert [first.items.describe(i) for i in range(2)] == want
    first.items.load(0)  # opens the zip in this object
    again = pickle.loads(pickle.dumps(first))  # a Ray task gets paths and names, not the handle
    assert again.items == first.items and not again.items._zip
    np.testing.assert_array_equal(preprocess(again.items, c, (8, 8))[:, 0, 0, 0], train_idx[:2])
    with pytest.raises(ValueError, match=rf"d\.zip:{bad}: cannot read image"):
        load_source(c, 0)


def test_lsun_lmdb_sorted_keys_split_and_one_class(tmp_path: Path) -> None:
    keys = write_lsun_lmdb(tmp_path / "church_outdoor_train_lmdb", 20)
    c = cfg(
        source="lsun",
        root=str(tmp_path / "church_outdoor_train_lmdb"),
        channels=3,
        resize="center_crop",
        test_fraction=0.25,
    )
    lazy = open_source(c, 0)
    train_idx, test_idx = split_indices(20, 0.25, 0)
    assert lazy.splits["train"].items.keys == [keys[i] for i in train_idx]  # type: ignore[attr-defined]
    assert lazy.splits["test"].items.keys == [keys[i] for i in test_idx]  # type: ignore[attr-defined]
    assert lazy.classes == ["church_outdoor_train_lmdb"]
    data = load_source(c, 0)
    assert data.splits["train"].images.shape == (15, 3, 8, 8)
    assert (data.splits["train"].labels == 0).all() and len(data.splits["test"].labels) == 5
    assert data.splits["train"].images.std() > 20  # decoded pixels, not a blank canvas


def test_lsun_bad_inputs_are_named(tmp_path: Path) -> None:
    c = cfg(source="lsun", channels=3, resize="center_crop", test_fraction=0.25)
    with pytest.raises(FileNotFoundError, match=r"nowhere is not a folder; expected an LSUN LMDB"):
        open_source(dataclasses.replace(c, root=str(tmp_path / "nowhere")), 0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty/data\.mdb not found"):
        open_source(dataclasses.replace(c, root=str(tmp_path / "empty")), 0)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "data.mdb").write_bytes(b"not an lmdb" * 500)
    with pytest.raises(ValueError, match=r"junk: not a readable LMDB environment"):
        open_source(dataclasses.replace(c, root=str(tmp_path / "junk")), 0)
    import lmdb

    keys = write_lsun_lmdb(tmp_path / "bad", 8)
    with lmdb.open(str(tmp_path / "bad")) as env, env.begin(write=True) as txn:
        txn.put(keys[3], b"\x00garbage")
    with pytest.raises(ValueError, match=rf"bad:{keys[3].decode()}: cannot read image"):
        load_source(dataclasses.replace(c, root=str(tmp_path / "bad")), 0)


# ----------------------------------------------------------------------------------------------
# The official CelebA-HQ downscale, bad images


def pggan_pyramid(chw: np.ndarray, levels: int) -> np.ndarray:
    """progressive_growing_of_gans' `TFRecordExporter.add_image` on a (C, H, W) uint8 image:
    `levels` halvings by 2x2 averages in float32, np.rint and clip at the level kept."""
    img = chw
    for _ in range(levels):
        img = img.astype(np.float32)
        img = (
            img[:, 0::2, 0::2] + img[:, 0::2, 1::2] + img[:, 1::2, 0::2] + img[:, 1::2, 1::2]
        ) * 0.25
    return np.rint(img).clip(0, 255).astype(np.uint8)


def test_box_downscale_is_the_official_celebahq_pyramid(tmp_path: Path) -> None:
    """A known 1024^2 image (smooth + noise, and a 1024 x 1100 one centre-cropped to it) -> 256^2
    equals the pyramid computed in numpy as PGGAN's dataset tool does; lanczos is another choice."""
    rng = np.random.default_rng(0)
    ramp = np.add.outer(np.arange(1024), np.arange(1024)) / 8
    hwc = (ramp[..., None] + rng.normal(0, 20, (1024, 1024, 3))).clip(0, 255).astype(np.uint8)
    want = pggan_pyramid(hwc.transpose(2, 0, 1), 2)  # (3, 256, 256)
    tall = np.concatenate([rng.integers(0, 256, (38, 1024, 3), dtype=np.uint8), hwc,
                           rng.integers(0, 256, (38, 1024, 3), dtype=np.uint8)])  # fmt: skip
    write_png(tmp_path / "faces" / "00000.png", tall)  # 1024 wide, 1100 high
    c = cfg(source="image_folder", root=str(tmp_path / "faces"), resolution=256, channels=3,
            resize="center_crop", downscale="box", test_fraction=0.0)  # fmt: skip
    got = load_source(c, 0).splits["train"].images[0]
    np.testing.assert_array_equal(got, want)
    lanczos = load_source(dataclasses.replace(c, downscale="lanczos"), 0).splits["train"].images[0]
    assert np.abs(lanczos.astype(int) - want).max() > 2  # a named, different filter
    write_png(tmp_path / "odd" / "0.png", hwc[:1000, :1000])
    with pytest.raises(ValueError, match=r"odd/0\.png: square side 1000 is not 256 x a power"):
        load_source(dataclasses.replace(c, root=str(tmp_path / "odd")), 0)


def test_bad_images_skip_names_each_in_the_manifest_and_fail_stops(tmp_path: Path) -> None:
    import lmdb

    from pipelines.artifacts.shards import load_split, read_manifest
    from pipelines.data.stage import build_shards

    keys = write_lsun_lmdb(tmp_path / "cat", 12)
    with lmdb.open(str(tmp_path / "cat")) as env, env.begin(write=True) as txn:
        for k in (keys[2], keys[7]):
            txn.put(k, b"not an image")
    c = cfg(source="lsun", root=str(tmp_path / "cat"), channels=3, resize="center_crop",
            test_fraction=0.0, shard_size=4)  # fmt: skip
    with pytest.raises(ValueError, match=rf"cat:{keys[2].decode()}: cannot read image"):
        build_shards(c, 0, tmp_path / "fail")
    manifest = build_shards(dataclasses.replace(c, bad_images="skip"), 0, tmp_path / "skip")
    skipped = manifest["skipped_images"]
    assert len(skipped) == 2 and all(": cannot read image" in x for x in skipped)
    assert [x.split(": ")[0] for x in skipped] == [
        f"{tmp_path / 'cat'}:{k.decode()}" for k in (keys[2], keys[7])
    ]
    assert list(manifest["splits"]) == ["train"] and manifest["splits"]["train"]["num_images"] == 10
    assert read_manifest(tmp_path / "skip")["params"]["data"]["bad_images"] == "skip"
    images, _ = load_split(tmp_path / "skip", "train")
    assert images.shape == (10, 3, 8, 8)

"""Data sources: the exact digits split, seeded --limit, IDX files and image folders as [0, 1] floats."""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from results_docs import PEAK_MB, run_peak

from robench.data import (
    FASHION_MNIST_DIR,
    InputConfig,
    content_sha256,
    ids_sha256,
    load_digits_source,
    open_source,
    read_class_list,
    select,
)
from robench.data.images import _Decoded
from robench.errors import FieldError, RobenchError

# ---------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def sk_digits():
    from sklearn.datasets import load_digits

    return load_digits()


def test_digits_test_split_is_every_fifth_sklearn_index(sk_digits) -> None:
    src = load_digits_source("test")
    expected = [i for i in range(len(sk_digits.target)) if i % 5 == 0]
    assert len(expected) == 360
    assert src.ids == [f"digits:{i}" for i in expected]
    assert src.ids[:4] == ["digits:0", "digits:5", "digits:10", "digits:15"] and src.ids[-1] == "digits:1795"
    assert src.labels.tolist() == sk_digits.target[expected].tolist()
    assert src.num_classes == 10 and src.name == "digits"


def test_digits_train_split_is_the_rest(sk_digits) -> None:
    train, test = load_digits_source("train"), load_digits_source("test")
    assert len(train.ids) == 1437
    assert set(train.ids).isdisjoint(test.ids)
    assert len(set(train.ids) | set(test.ids)) == len(sk_digits.target) == 1797
    assert train.ids[:4] == ["digits:1", "digits:2", "digits:3", "digits:4"]
    assert train.labels.tolist() == [t for i, t in enumerate(sk_digits.target.tolist()) if i % 5]


@pytest.mark.parametrize("size", [(8, 8), (32, 32), (20, 24)])
def test_digits_images_are_unit_floats_at_the_input_size(sk_digits, size: tuple[int, int]) -> None:
    src = load_digits_source("test")
    batch = next(src.batches(InputConfig(size=size), 7))
    assert batch.images.dtype == torch.float32 and batch.images.shape == (7, 3, *size)
    assert batch.images.min() >= 0.0 and batch.images.max() <= 1.0
    assert batch.labels.tolist() == sk_digits.target[[0, 5, 10, 15, 20, 25, 30]].tolist()
    assert batch.rows.tolist() == list(range(7))
    assert torch.equal(batch.images[:, 0], batch.images[:, 2])  # gray: the channels are copies
    if size == (8, 8):  # no resize: exactly sklearn's 17 gray levels / 16
        assert torch.equal(batch.images[1, 0], torch.from_numpy(sk_digits.images[5] / 16).float())


def test_digits_single_channel_and_order() -> None:
    src = load_digits_source("test", limit=10)
    batch = next(src.batches(InputConfig(channels=1, size=(8, 8)), 10))
    assert batch.images.shape == (10, 1, 8, 8)
    order = torch.tensor([9, 0, 4])
    shuffled = next(src.batches(InputConfig(size=(8, 8)), 3, order))
    assert shuffled.rows.tolist() == [9, 0, 4] and shuffled.labels.tolist() == src.labels[order].tolist()


def test_batches_cover_every_sample_once() -> None:
    src = load_digits_source("test")
    batches = list(src.batches(InputConfig(size=(8, 8)), 100))
    assert [len(b.rows) for b in batches] == [100, 100, 100, 60]
    assert torch.cat([b.rows for b in batches]).tolist() == list(range(360))


# ---------------------------------------------------------------- --limit


def _index(ids: list[str]) -> list[int]:
    return [int(i.rsplit(":", 1)[1]) for i in ids]


def test_limit_is_a_seeded_sorted_subset() -> None:
    full = load_digits_source("test").ids
    a, b, c = (load_digits_source("test", 40, seed).ids for seed in (0, 0, 7))
    assert len(a) == 40 and a == b and a != c
    assert _index(a) == sorted(_index(a)) and set(a) <= set(full)
    assert ids_sha256(a) == ids_sha256(b) != ids_sha256(c)
    assert load_digits_source("test", 360, seed=3).ids == full  # all of them, in order


@pytest.mark.parametrize(("limit", "message"), [(361, "more than the 360 samples"), (0, "positive"), (-5, "positive")])
def test_limit_errors(limit: int, message: str) -> None:
    with pytest.raises(RobenchError, match=message) as err:
        load_digits_source("test", limit)
    assert err.value.field == "limit"  # the library names the field; the CLI says --limit (test_cli)
    if limit > 0:
        assert "use limit 360 or less" in str(err.value)
        assert err.value.named("--limit").endswith("use --limit 360 or less")


def test_limit_is_per_split() -> None:
    assert len(load_digits_source("train", 1437).ids) == 1437
    with pytest.raises(RobenchError, match=r"more than the 1437 samples in digits \(train split\)"):
        load_digits_source("train", 1438)


def test_select_matches_numpy_permutation() -> None:
    assert select(10, None, 0, "x").tolist() == list(range(10))
    assert select(10, 4, 5, "x").tolist() == sorted(np.random.default_rng(5).permutation(10)[:4].tolist())


# ---------------------------------------------------------------- Fashion-MNIST (IDX files)


def _idx_bytes(array: np.ndarray) -> bytes:
    """The IDX format: 0x0000, type 0x08 (uint8), ndim, then ndim big-endian uint32 sizes, then the data."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_fashion(root: Path, images: np.ndarray, labels: np.ndarray, gz: bool, prefix: str = "t10k") -> None:
    root.mkdir(parents=True, exist_ok=True)
    for stem, array in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
        data = _idx_bytes(array)
        if gz:
            (root / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (root / stem).write_bytes(data)


IMAGES = (np.arange(6 * 28 * 28).reshape(6, 28, 28) * 7) % 256
LABELS = np.array([9, 0, 0, 3, 2, 7])


def test_idx_header_is_the_real_format() -> None:
    data = _idx_bytes(IMAGES)
    assert data[:4] == bytes([0, 0, 8, 3]) and data[4:16] == (6).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    assert _idx_bytes(LABELS)[:8] == bytes([0, 0, 8, 1, 0, 0, 0, 6])


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "raw"])
def test_fashion_mnist_idx_files_load(tmp_path: Path, gz: bool) -> None:
    _write_fashion(tmp_path, IMAGES, LABELS, gz)
    src = open_source(f"fashion-mnist:{tmp_path}")
    assert src.name == "fashion-mnist" and src.num_classes == 10
    assert src.ids == [f"fashion-mnist:test:{i}" for i in range(6)]
    assert src.labels.tolist() == LABELS.tolist()
    batch = next(src.batches(InputConfig(size=(28, 28)), 6))
    assert batch.images.dtype == torch.float32 and batch.images.shape == (6, 3, 28, 28)
    assert torch.equal(batch.images[:, 1], torch.from_numpy(IMAGES).float() / 255)
    small = next(src.batches(InputConfig(size=(14, 14)), 6)).images
    assert small.shape == (6, 3, 14, 14) and small.min() >= 0 and small.max() <= 1


@pytest.mark.parametrize("name", ["fashion-mnist", "mnist"])
def test_idx_train_split_and_limit(tmp_path: Path, name: str) -> None:
    """The training split of MNIST-format data: train-* files, given by the same spec as the test split."""
    _write_fashion(tmp_path, IMAGES[:4], LABELS[:4], gz=True, prefix="train")
    src = open_source(f"{name}:{tmp_path}", "train", limit=2, seed=1)
    picked = sorted(np.random.default_rng(1).permutation(4)[:2].tolist())
    assert src.ids == [f"{name}:train:{i}" for i in picked]
    assert src.labels.tolist() == LABELS[picked].tolist()
    assert torch.equal(src.images[:, 0], torch.from_numpy(IMAGES[picked].astype(np.uint8)))
    with pytest.raises(RobenchError, match=r"t10k-images-idx3-ubyte\[\.gz\] not found"):
        open_source(f"{name}:{tmp_path}", "test")


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        (b"\x00\x00\x09\x03" + b"\x00" * 20, _idx_bytes(LABELS), "bad magic number"),  # type 0x09, not uint8
        (b"\x00\x01\x08\x03" + b"\x00" * 20, _idx_bytes(LABELS), "bad magic number"),
        (_idx_bytes(IMAGES)[:-100], _idx_bytes(LABELS), "it ends before its 6x28x28 bytes of data"),  # truncated
        (_idx_bytes(IMAGES) + b"\x00", _idx_bytes(LABELS), "it holds more than the 6x28x28 bytes"),  # trailing
        (_idx_bytes(IMAGES)[:10], _idx_bytes(LABELS), "cannot read IDX file"),  # truncated header
        (b"", _idx_bytes(LABELS), "cannot read IDX file"),
        (_idx_bytes(IMAGES), _idx_bytes(LABELS[:5]), "do not match"),  # 6 images, 5 labels
        (_idx_bytes(LABELS), _idx_bytes(LABELS), "do not match"),  # labels given as images
    ],
)
def test_corrupt_idx_files(tmp_path: Path, images: bytes, labels: bytes, message: str) -> None:
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(images)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(labels)
    with pytest.raises(RobenchError, match=message):
        open_source(f"fashion-mnist:{tmp_path}")


def test_corrupt_gzip(tmp_path: Path) -> None:
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(IMAGES))[:-30])
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(RobenchError, match=r"cannot read IDX file .*t10k-images-idx3-ubyte\.gz"):
        open_source(f"fashion-mnist:{tmp_path}")


def _gzip_bomb(header: bytes, mib: int) -> bytes:
    """A gzip of ``header`` then ``mib`` MiB of zeros, about 1 KB a MiB: one flushed deflate block repeated.

    Its CRC covers only what the compressor saw: a reader that stops early never checks it.
    """
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)
    start = deflate.compress(header) + deflate.flush(zlib.Z_FULL_FLUSH)
    block = deflate.compress(bytes(2**20)) + deflate.flush(zlib.Z_FULL_FLUSH)
    return start + block * mib + deflate.flush()


@pytest.mark.slow
def test_a_gzip_bomb_is_refused_after_what_its_header_claims(tmp_path: Path) -> None:
    """A 4 MB t10k-images-idx3-ubyte.gz claiming 60000x28x28 but inflating to 4 GiB: read 47 MB, then refused."""
    header = struct.pack(">HBBIII", 0, 0x08, 3, 60000, 28, 28)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(_gzip_bomb(header, 4096))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(60000)))
    assert (tmp_path / "t10k-images-idx3-ubyte.gz").stat().st_size < 5 * 2**20
    code, lines, grown_mb = run_peak("eval", "test_resnet", "--data", f"fashion-mnist:{tmp_path}", "--attack", "fgsm",
                                    "--eps", "8", "-q", "--limit", "4")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0] == (f"robench: error: cannot read IDX file {tmp_path / 't10k-images-idx3-ubyte.gz'}: it holds "
                        f"more than the 60000x28x28 bytes its header claims; is it an uncorrupted Fashion-MNIST file?")
    assert grown_mb < PEAK_MB, grown_mb


@pytest.mark.parametrize(("header", "message"), [
    (struct.pack(">HBBIII", 0, 0x08, 3, 2**20, 2**10, 2**10), "claims 1048576x1024x1024 = 1099511627776 bytes, over"),
    (struct.pack(">HBBI", 0, 0x08, 9, 1), "bad magic number"),  # 9 dimensions
    (struct.pack(">HBBII", 0, 0x08, 3, 6, 28), "it ends before its header"),
])
def test_idx_headers_claiming_too_much_are_refused_before_reading(tmp_path: Path, header: bytes,
                                                                   message: str) -> None:
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(header)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(LABELS))
    with pytest.raises(RobenchError, match=re.escape(message)):
        open_source(f"fashion-mnist:{tmp_path}")


def test_missing_fashion_mnist_folder(tmp_path: Path) -> None:
    with pytest.raises(RobenchError) as err:
        open_source(f"fashion-mnist:{tmp_path / 'nowhere'}")
    assert "dataset-fashion-mnist" in str(err.value) and "fashion-mnist:DIR" in str(err.value)
    assert str(tmp_path / "nowhere") in str(err.value)


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_system_package() -> None:
    src = open_source("fashion-mnist")
    assert len(src.ids) == 10_000 and src.num_classes == 10
    assert src.ids[0] == "fashion-mnist:test:0" and src.ids[-1] == "fashion-mnist:test:9999"
    assert np.bincount(src.labels.numpy()).tolist() == [1000] * 10  # Fashion-MNIST's test set is balanced
    batch = next(src.batches(InputConfig(size=(32, 32)), 16))
    assert batch.images.shape == (16, 3, 32, 32) and batch.images.min() >= 0 and batch.images.max() <= 1


# ---------------------------------------------------------------- image folders

COLORS = {"cat": (250, 20, 0), "dog": (0, 60, 200)}


def _folder(root: Path, n: int = 2, size: tuple[int, int] = (40, 30)) -> Path:
    for cls, color in COLORS.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", size, color).save(root / cls / f"{i}.png")
    return root


def test_image_folder_ids_labels_and_unit_floats(tmp_path: Path) -> None:
    src = open_source(str(_folder(tmp_path / "imgs")))
    assert src.ids == ["cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png"] and src.num_classes == 2
    batch = next(src.batches(InputConfig(size=(16, 16)), 4))
    assert batch.labels.tolist() == [0, 0, 1, 1] and batch.rows.tolist() == [0, 1, 2, 3]
    # float32 in [0, 1]: timm's transform without normalization would give uint8 0..255
    assert batch.images.dtype == torch.float32 and batch.images.shape == (4, 3, 16, 16)
    assert batch.images.min() >= 0.0 and batch.images.max() <= 1.0
    for row, cls in enumerate(["cat", "cat", "dog", "dog"]):
        expected = torch.tensor(COLORS[cls], dtype=torch.float32) / 255
        assert torch.allclose(batch.images[row].mean(dim=(1, 2)), expected, atol=1e-3)


@pytest.mark.parametrize(
    "cfg",
    [InputConfig(size=(16, 16)), InputConfig(size=(20, 24)), InputConfig(size=(33, 33), interpolation="bicubic",
                                                                           crop_pct=0.875)],
)
def test_image_folder_follows_the_input_config(tmp_path: Path, cfg: InputConfig) -> None:
    src = open_source(str(_folder(tmp_path / "imgs", n=1, size=(50, 37))))
    batch = next(src.batches(cfg, 2))
    assert batch.images.shape == (2, 3, *cfg.size) and batch.images.dtype == torch.float32
    assert batch.images.min() >= 0.0 and batch.images.max() <= 1.0


def test_image_folder_gray_and_rgba_images_become_rgb(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True)
    Image.new("L", (12, 12), 51).save(root / "a" / "gray.png")
    Image.new("RGBA", (12, 12), (255, 0, 0, 128)).save(root / "a" / "rgba.png")
    batch = next(open_source(str(root)).batches(InputConfig(size=(8, 8)), 2))
    assert batch.images.shape == (2, 3, 8, 8)
    assert torch.allclose(batch.images[0], torch.full((3, 8, 8), 0.2), atol=1e-3)
    assert torch.allclose(batch.images[1, 0], torch.ones(8, 8)) and batch.images[1, 1:].max() == 0


def test_image_folder_limit(tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs", n=5)
    a, b = open_source(str(root), limit=3, seed=2), open_source(str(root), limit=3, seed=2)
    everything = open_source(str(root)).ids
    assert a.ids == b.ids and len(a.ids) == 3 and a.ids == [i for i in everything if i in a.ids]
    with pytest.raises(RobenchError, match="more than the 10 samples"):
        open_source(str(root), limit=11)


def test_image_folder_val_split(tmp_path: Path) -> None:
    _folder(tmp_path / "ds" / "train", n=3)
    _folder(tmp_path / "ds" / "val", n=1)
    assert open_source(str(tmp_path / "ds")).ids == ["cat/0.png", "dog/0.png"]
    assert len(open_source(str(tmp_path / "ds"), "train").ids) == 6


def test_empty_image_folder(tmp_path: Path) -> None:
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(RobenchError, match="no images found in"):
        open_source(str(tmp_path / "empty"))


def _special_files(folder: Path) -> None:
    """A FIFO and a socket named like images: opening the FIFO would wait for a writer forever."""
    import os
    import socket

    os.mkfifo(folder / "pipe.png")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(folder / "sock.jpg"))
    sock.close()


def test_special_files_in_an_image_folder_are_left_out_with_one_warning(tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs")
    _special_files(root / "cat")
    heard: list[str] = []
    src = open_source(str(root), warn=heard.append)
    assert src.ids == ["cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png"]
    assert len(heard) == 1 and "2 entries named like an image are not regular files (a FIFO, socket or device, " \
                                "e.g. cat/" in heard[0] and "left out unread" in heard[0], heard
    assert next(src.batches(InputConfig(size=(8, 8)), 8)).images.shape == (4, 3, 8, 8)


def test_a_folder_of_only_special_files_has_no_images(tmp_path: Path) -> None:
    (tmp_path / "imgs" / "cat").mkdir(parents=True)
    _special_files(tmp_path / "imgs" / "cat")
    with pytest.raises(RobenchError, match=r"no images found in .*: its 2 image names are not regular files"):
        open_source(str(tmp_path / "imgs"))


@pytest.mark.slow
def test_eval_of_a_folder_holding_a_fifo_finishes_and_warns_once(tmp_path: Path) -> None:
    """It used to hang forever, opening the FIFO."""
    import os
    import subprocess
    import sys

    root = _folder(tmp_path / "imgs")
    os.mkfifo(root / "dog" / "pipe.png")
    res = subprocess.run([sys.executable, "-m", "robench", "eval", "test_resnet", "--data", str(root), "--attack",
                          "fgsm", "--eps", "8", "--limit", "4", "-q", "--no-health"], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("not a regular file") == 1 and "dog/pipe.png" in res.stderr, res.stderr


def test_unknown_timm_dataset_string() -> None:
    with pytest.raises(RobenchError, match="cannot open dataset torch/not-a-dataset"):
        open_source("torch/not-a-dataset")


def test_a_symlink_loop_is_walked_once_with_one_warning(tmp_path: Path) -> None:
    """timm's walker (os.walk following links) listed every image about 40 times through ``cat/loop -> ..``."""
    root = _folder(tmp_path / "imgs")
    os.symlink("..", root / "cat" / "loop")
    os.symlink("../dog", root / "cat" / "dog-again")  # a second way into one folder: its own name keeps its class
    heard: list[str] = []
    src = open_source(str(root), warn=heard.append)
    assert src.ids == ["cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png"] and src.classes == ["cat", "dog"]
    assert len(heard) == 1 and "2 folders reached a second time (a symlink loop or a second link" in heard[0], heard


def test_a_linked_folder_outside_the_data_is_read(tmp_path: Path) -> None:
    _folder(tmp_path / "elsewhere")
    root = tmp_path / "imgs"
    root.mkdir()
    os.symlink(tmp_path / "elsewhere" / "cat", root / "cat")
    assert open_source(str(root)).ids == ["cat/0.png", "cat/1.png"]


def _unreadable(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """``folder`` fails to list as a mode-000 folder does; chmod 000 does not stop root, who runs some test machines."""
    scandir = os.scandir

    def denying(path: Any = ".") -> Any:
        if os.fspath(path) == str(folder):
            raise PermissionError(13, "Permission denied", str(folder))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", denying)


def test_an_unreadable_class_folder_is_an_error_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its images were dropped without a word."""
    root = _folder(tmp_path / "imgs")
    _unreadable(monkeypatch, root / "dog")
    with pytest.raises(RobenchError, match=r"data .*imgs: cannot read its folder dog: Permission denied; make it "
                                           r"readable"):
        open_source(str(root))


def test_an_unreadable_image_is_an_error_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _folder(tmp_path / "imgs")
    access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: not p.endswith("dog/1.png") and access(p, mode))
    with pytest.raises(RobenchError, match=r"cannot read the image dog/1.png \(permission denied or a broken link\)"):
        open_source(str(root))


def test_every_format_pil_decodes_is_read(tmp_path: Path) -> None:
    """Only .png, .jpg and .jpeg were listed: GIF, BMP, WebP and TIFF images were dropped without a word."""
    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True)
    for ext in ("bmp", "gif", "png", "tif", "tiff", "webp"):
        Image.new("RGB", (12, 12), (255, 0, 0)).save(root / "a" / f"red.{ext}", **({"lossless": True} if ext ==
                                                                                      "webp" else {}))
    (root / "a" / "features.h5").write_bytes(b"\x89HDF\r\n\x1a\n")  # PIL names HDF5 but decodes it only with a plugin
    heard: list[str] = []
    src = open_source(str(root), warn=heard.append)
    assert src.ids == [f"a/red.{ext}" for ext in ("bmp", "gif", "png", "tif", "tiff", "webp")]
    batch = next(src.batches(InputConfig(size=(8, 8)), 6))
    assert torch.allclose(batch.images[:, 0], torch.ones(6, 8, 8)) and batch.images[:, 1:].max() == 0
    assert len(heard) == 1 and "1 file in formats PIL cannot decode without a plugin or program (e.g. " \
                               "a/features.h5, HDF5) left out" in heard[0], heard


def test_a_file_name_that_is_not_utf8_is_refused_at_open(tmp_path: Path) -> None:
    """It ran to the end and then failed to write the ids (exit 3, all work lost)."""
    root = _folder(tmp_path / "imgs")
    Image.new("RGB", (8, 8)).save(os.fsdecode(os.fsencode(root / "cat") + b"/caf\xe9.png"), format="PNG")
    with pytest.raises(RobenchError, match=r"the file name cat/caf\\xe9.png is not UTF-8 and cannot be recorded"):
        open_source(str(root))


@pytest.mark.slow  # about 7 s on 2 cores
def test_eval_refuses_a_name_that_is_not_utf8_before_any_work(tmp_path: Path) -> None:
    """Exit 2, one line naming the file, no results file; it was exit 3 after the whole run."""
    from click.testing import CliRunner

    from robench.cli.main import main

    root = _folder(tmp_path / "imgs")
    Image.new("RGB", (8, 8)).save(os.fsdecode(os.fsencode(root / "dog") + b"/\xff.png"), format="PNG")
    out = tmp_path / "r.json"
    res = CliRunner().invoke(main, ["eval", "test_resnet", "--data", str(root), "--attack", "fgsm", "--eps", "8",
                                    "-q", "--no-health", "--out", str(out)])
    assert res.exit_code == 2 and res.stderr.count("\n") == 1 and "dog/\\xff.png is not UTF-8" in res.stderr, \
        res.stderr
    assert not out.exists()


def test_missing_image_folder(tmp_path: Path) -> None:
    with pytest.raises(RobenchError, match="dataset folder not found"):
        open_source(str(tmp_path / "nope"))


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_png_names_the_file(tmp_path: Path, workers: int) -> None:
    root = _folder(tmp_path / "imgs")
    (root / "dog" / "2.png").write_bytes(os.urandom(256))
    src = open_source(str(root), workers=workers)
    with pytest.raises(FieldError) as err:
        list(src.batches(InputConfig(size=(8, 8)), 2))
    bad = root / "dog" / "2.png"
    assert str(err.value) == (f"cannot read image {bad}: corrupt or not an image; remove or replace it, "
                              f"or pass skip_bad_images to leave it out (it is recorded)")  # the CLI: its option
    assert err.value.named("--skip-bad-images").endswith("or pass --skip-bad-images to leave it out (it is recorded)")


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_png_skipped_and_recorded(tmp_path: Path, workers: int) -> None:
    root = _folder(tmp_path / "imgs")
    (root / "dog" / "2.png").write_bytes(os.urandom(256))
    src = open_source(str(root), workers=workers, skip_bad=True)
    batches = list(src.batches(InputConfig(size=(8, 8)), 2))
    bad_row = src.ids.index("dog/2.png")
    rows = torch.cat([b.rows for b in batches]).tolist()
    assert sorted(rows) == [r for r in range(len(src.ids)) if r != bad_row]  # every other image, once
    assert all(len(b.images) == len(b.labels) == len(b.rows) for b in batches)
    assert src.skipped == {bad_row: str(root / "dog" / "2.png")}


def test_truncated_png_names_the_file(tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs")
    data = (root / "cat" / "1.png").read_bytes()
    (root / "cat" / "1.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(RobenchError, match=r"cannot read image .*cat/1\.png"):
        list(open_source(str(root)).batches(InputConfig(size=(8, 8)), 4))


def _png(width: int, height: int, zeros: bool = False) -> bytes:
    """A gray 8-bit PNG written by hand: its header says width x height; its pixels are all 0 when ``zeros``,
    else absent (PIL's bomb check reads only the header). Deflated zeros cost about 1 KB a MB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    deflate, row = zlib.compressobj(9), bytes(width + 1)  # each row: filter byte 0, then the pixels
    pixels = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush() if zeros else b""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


BOMBS = {"error": (20000, 10000, False), "warning": (10000, 10000, True)}  # 200M px: PIL raises; 100M: it warns


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("bomb", list(BOMBS))
def test_decompression_bomb_images_are_unreadable_by_name(tmp_path: Path, workers: int, bomb: str) -> None:
    root = _folder(tmp_path / "imgs")
    bad = root / "dog" / "2.png"
    bad.write_bytes(_png(*BOMBS[bomb]))
    with pytest.raises(RobenchError) as err:
        list(open_source(str(root), workers=workers).batches(InputConfig(size=(8, 8)), 2))
    size = "x".join(map(str, BOMBS[bomb][:2]))
    assert str(err.value).startswith(f"cannot read image {bad}: PIL refuses it as a possible decompression bomb: "
                                     f"Image size ({eval(size.replace('x', '*'))} pixels) exceeds limit of "), size
    src = open_source(str(root), workers=workers, skip_bad=True)
    assert sum(len(b.rows) for b in src.batches(InputConfig(size=(8, 8)), 2)) == 4
    assert src.skipped == {src.ids.index("dog/2.png"): str(bad)}


@pytest.mark.slow
def test_a_decompression_bomb_image_leaves_one_line(tmp_path: Path) -> None:
    """In a fresh process, where PIL's warning would print: one error line, and the image never decoded."""
    root = tmp_path / "digits"
    for digit in range(10):
        (root / str(digit)).mkdir(parents=True)
        Image.new("L", (8, 8), 16 * digit).save(root / str(digit) / "0.png")
    (root / "3" / "0.png").write_bytes(_png(*BOMBS["warning"]))
    code, lines, grown_mb = run_peak("eval", "zoo:resnet-base", "--data", root, "--attack", "fgsm", "--eps", "8", "-q",
                                    "--no-health", "--workers", "2")
    lines = [ln for ln in lines if "was trained on digits (its checkpoint says)" not in ln]  # the folder is not
    assert code == 2 and len(lines) == 1, lines  # digits by name: warned of; PIL's own warning never shows
    assert lines[0].startswith(f"robench: error: cannot read image {root / '3' / '0.png'}: PIL refuses it")
    assert grown_mb < PEAK_MB, grown_mb


def test_sixteen_bit_gray_pngs_are_scaled_not_clipped(tmp_path: Path) -> None:
    """convert("RGB") clips a 16-bit PNG at 255: a random one came out 99.6% white."""
    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True)
    values = np.array([[0, 32768, 65535, 1000]] * 4, dtype=np.uint16)
    Image.fromarray(values).save(root / "a" / "wide.png")
    assert Image.open(root / "a" / "wide.png").mode == "I;16"
    src = open_source(str(root))
    assert src.native == (1, 4, 4)
    expected = torch.from_numpy(values / 65535).float()
    assert expected[0].tolist() == pytest.approx([0.0, 0.5, 1.0, 0.0153], abs=1e-4)
    for channels in (1, 3):
        image = next(src.batches(InputConfig(channels=channels, size=(4, 4)), 1)).images[0]
        assert image.shape == (channels, 4, 4) and torch.allclose(image, expected.expand(channels, 4, 4), atol=1e-6)
    bigger = next(src.batches(InputConfig(channels=1, size=(9, 9), interpolation="bicubic"), 1)).images
    assert bigger.min() >= 0 and bigger.max() <= 1  # bicubic overshoot clipped, as uint8 clips it


def test_float_gray_images_are_taken_in_zero_to_one_and_refused_outside() -> None:
    values = np.array([[0.0, 0.25, 1.0, 0.5]] * 4, dtype=np.float32)
    inside, outside = Image.fromarray(values), Image.fromarray(values * 3)
    assert inside.mode == "F" and torch.allclose(_Decoded(lambda i: (inside, 0, "h"), np.arange(1),
                                                          InputConfig(size=(4, 4)))[0][0][2], torch.from_numpy(values))
    assert _Decoded(lambda i: (outside, 0, "h"), np.arange(1), InputConfig(size=(4, 4)))[0][1:] == (
        -1, 0, "", "its mode F holds values from 0 to 3, outside 0..1 (robench reads 16-bit images as 0..65535 and "
                   "float ones as 0..1)")


# ---------------------------------------------------------------- class order


def _clean_accuracy(model: torch.nn.Module, src) -> float:
    """Clean top-1 as an eval run scores it (robench.engine.evaluate)."""
    from robench.attacks.suite import load_suite, override
    from robench.engine import evaluate

    batches = src.batches(InputConfig(size=(8, 8)), 4)
    return float(evaluate(model, batches, src.ids, override(load_suite(), ("fgsm",), (2.0,))).correct()[0].mean())


def test_torchvision_numbering_scores_a_third_in_natural_order(class_folder, tmp_path: Path) -> None:
    """The repro: folders 1, 2, 10 and a model numbering them as torchvision does (1, 10, 2)."""
    from class_folders import GreyLookup, torchvision_classes

    root = class_folder("1", "2", "10")
    trained_on = torchvision_classes(root)
    assert trained_on == ["1", "10", "2"]
    model, notes = GreyLookup(trained_on), []
    natural = open_source(str(root), warn=notes.append)
    assert natural.classes == ["1", "2", "10"] and _clean_accuracy(model, natural) == pytest.approx(1 / 3)
    assert len(notes) == 1 and "\n" not in notes[0]
    assert "naturally (1, 2, 10) and as strings (1, 10, 2, as torchvision's ImageFolder does)" in notes[0]
    assert "pass class_order lexical" in notes[0] and "or classes FILE" in notes[0]  # fields, as FieldNote names them
    assert "pass --class-order lexical" in notes[0].named(lambda field: "--" + field.replace("_", "-"))
    lexical = open_source(str(root), class_order="lexical", warn=notes.append)
    assert lexical.classes == trained_on and _clean_accuracy(model, lexical) == 1.0
    (tmp_path / "classes.txt").write_text("1\n10\n2\n\n\n")
    listed = open_source(str(root), classes=read_class_list(tmp_path / "classes.txt"), warn=notes.append)
    assert listed.classes == trained_on and _clean_accuracy(model, listed) == 1.0
    assert len(notes) == 1  # neither an explicit order nor a list warns


def test_mixed_case_folders(class_folder) -> None:
    """Natural order ignores case (A, b, C); strings and torchvision do not (A, C, b)."""
    from class_folders import GreyLookup, torchvision_classes

    root, notes = class_folder("b", "A", "C"), []
    assert torchvision_classes(root) == ["A", "C", "b"]
    natural = open_source(str(root), warn=notes.append)
    assert natural.classes == ["A", "b", "C"] and len(notes) == 1 and "(A, b, C)" in notes[0]
    lexical = open_source(str(root), class_order="lexical")
    assert lexical.classes == ["A", "C", "b"]
    assert _clean_accuracy(GreyLookup(torchvision_classes(root)), lexical) == 1.0


def test_folders_that_sort_alike_do_not_warn(class_folder) -> None:
    notes: list[str] = []
    assert open_source(str(class_folder("1", "2")), warn=notes.append).classes == ["1", "2"] and notes == []


def test_class_list_may_name_more_classes_than_folders(class_folder) -> None:
    src = open_source(str(class_folder("1", "2")), classes=["0", "2", "1", "3"])
    assert src.num_classes == 4 and src.classes == ["0", "2", "1", "3"]
    batch = next(src.batches(InputConfig(size=(8, 8)), 4))
    assert sorted(batch.labels.tolist()) == [1, 1, 2, 2]


def test_a_folder_the_list_does_not_name_is_an_error(class_folder) -> None:
    with pytest.raises(RobenchError, match=r"class folder '10' not named in the model's list"):
        open_source(str(class_folder("1", "2", "10")), classes=["1", "2"], classes_from="the model's list")


def test_class_list_files_from_windows_editors(tmp_path: Path) -> None:
    """A UTF-8 byte-order mark and CRLF line ends are not part of the names."""
    (tmp_path / "c.txt").write_bytes("\ufeff10\r\n2\r\n1\r\n".encode())
    assert read_class_list(tmp_path / "c.txt") == ["10", "2", "1"]


def test_a_class_list_that_is_no_regular_file_is_refused_unread(tmp_path: Path) -> None:
    """A FIFO or /dev/zero as --classes would never end: read_text refuses them, and reads at most its limit."""
    import os

    os.mkfifo(tmp_path / "fifo")
    for path, kind in ((tmp_path / "fifo", "is a named pipe"), (Path("/dev/zero"), "is a character device")):
        with pytest.raises(RobenchError) as err:
            read_class_list(path)
        assert err.value.named("--classes") == f"--classes: classes file {path} {kind}, not a regular file; give a file"


@pytest.mark.parametrize(("text", "message"), [
    ("a\nb\na\n", r"'a' is named twice \(entries 1 and 3\)"), ("a\n\nb\n", "entry 2 is empty"), ("\n\n", "no class"),
])
def test_bad_class_list_files(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "c.txt").write_text(text)
    with pytest.raises(RobenchError, match=message) as err:
        read_class_list(tmp_path / "c.txt")
    assert err.value.field == "classes" and "--classes file" in err.value.named("--classes")


def test_built_in_sources_name_their_classes(tmp_path: Path) -> None:
    assert load_digits_source("test", limit=1).classes == [str(d) for d in range(10)]
    images, labels = np.zeros((2, 28, 28), np.uint8), np.array([0, 9], np.uint8)
    _write_fashion(tmp_path, images, labels, gz=False)
    fashion = open_source(f"fashion-mnist:{tmp_path}")
    assert fashion.classes[0] == "T-shirt/top" and fashion.classes[9] == "Ankle boot" and len(fashion.classes) == 10
    assert open_source("digits", limit=1, classes=[str(d) for d in range(10)]).num_classes == 10
    with pytest.raises(RobenchError, match="data digits has the classes 0, 1, 2, 3, 4, ... but the model names "
                                           "T-shirt/top, Trouser"):
        open_source("digits", limit=1, classes=fashion.classes, classes_from="the model")


def test_unknown_class_order() -> None:
    with pytest.raises(RobenchError, match="class_order must be one of natural, lexical"):
        open_source("digits", class_order="alphabetical")


MNIST_1K = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist-test-1k"


def test_mnist_idx_folder() -> None:
    """Real MNIST (the first 1,000 test images, beside the checkout) through the IDX reader Fashion-MNIST uses."""
    if not MNIST_1K.is_dir():
        pytest.skip(f"{MNIST_1K} not present")
    source = open_source(f"mnist:{MNIST_1K}")
    assert (len(source.ids), source.native, source.classes) == (1000, (1, 28, 28), [str(d) for d in range(10)])
    assert source.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # as in the full set (its README)
    assert np.bincount(source.labels.numpy()).tolist() == [85, 126, 116, 107, 110, 87, 87, 99, 89, 94]
    assert source.ids[:2] == ["mnist:test:0", "mnist:test:1"]


def test_mnist_needs_its_folder(tmp_path: Path) -> None:
    with pytest.raises(RobenchError, match="mnist needs the folder of its IDX files: mnist:DIR"):
        open_source("mnist")
    with pytest.raises(RobenchError, match=r"MNIST file t10k-images-idx3-ubyte\[.gz\] not found in .*; give the"):
        open_source(f"mnist:{tmp_path}")
    with pytest.raises(RobenchError, match=r"^MNIST: folder .*nope not found; give the folder holding the IDX files"):
        open_source(f"mnist:{tmp_path / 'nope'}")
    _write_fashion(tmp_path, IMAGES, LABELS, gz=True)  # the test split only, as ../shared/data/mnist-test-1k
    with pytest.raises(RobenchError, match=r"the folder holds the test split \(t10k-\*\) but not the training split"):
        open_source(f"mnist:{tmp_path}", "train")


def test_content_hashes_tell_same_named_folders_apart(twin_folders: tuple[Path, Path]) -> None:
    """Ids are relative paths: only the content says that B's images are not A's."""
    a, b = (open_source(str(f), classes=[str(d) for d in range(10)]) for f in twin_folders)
    assert a.ids == b.ids
    cfg = InputConfig(channels=1, size=(8, 8))
    batches = {name: list(s.batches(cfg, 7)) for name, s in (("a", a), ("b", b))}
    content = {name: [c for batch in found for c in batch.content] for name, found in batches.items()}
    assert content["a"] == a.content(range(len(a.ids))) and len(content["a"]) == 20
    assert content["b"] == b.content(range(len(b.ids)))
    assert all(x != y for x, y in zip(content["a"], content["b"], strict=True))
    first = sorted((twin_folders[0]).rglob("*.png"))[0]  # the file's own bytes, nothing decoded
    assert a.content([a.ids.index(str(first.relative_to(twin_folders[0])))])[0] == \
        hashlib.sha256(first.read_bytes()).hexdigest()
    assert content_sha256(content["a"]) != content_sha256(content["b"])
    assert content_sha256([*content["a"][:-1], ""]) is None  # a sample not read yet: no fingerprint


def test_builtin_content_hashes_are_per_sample_and_batch_independent() -> None:
    source = load_digits_source(limit=12)
    cfg = InputConfig(channels=1, size=(8, 8))
    by_3 = [c for batch in source.batches(cfg, 3) for c in batch.content]
    by_12 = [c for batch in source.batches(cfg, 12) for c in batch.content]
    assert by_3 == by_12 == source.content(range(12)) and len(set(by_3)) == 12

"""Suites, data sources and model loading: parsing, exact splits, and clear errors."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robench.attacks.iterative import PgdConfig
from robench.data import FASHION_MNIST_DIR, InputConfig, load_digits_source, open_source
from robench.errors import RobenchError
from robench.models import Normalized, load_model, parse_spec, weights_sha256
from robench.suite import load_suite, override, parse_eps, parse_eps_list, parse_suite

CFG = InputConfig(size=(16, 16))

# ---------------------------------------------------------------- suites


def test_default_suite() -> None:
    suite = load_suite()
    assert [a.id for a in suite.attacks] == ["fgsm", "step_ll", "bim", "iter_ll", "pgd"]
    assert all(a.eps == (2.0, 4.0, 8.0, 16.0) for a in suite.attacks)
    assert suite.attacks[0].config.label == "true" and suite.attacks[4].config == PgdConfig(steps=10)


@pytest.mark.parametrize(("text", "value"), [("8/255", 8.0), ("8", 8.0), ("0.5", 0.5), ("1/2", 127.5), (4, 4.0)])
def test_parse_eps(text, value) -> None:
    assert parse_eps(text) == value


@pytest.mark.parametrize("text", ["-2", "256", "abc", "__import__('os')", True, "nan", "1/0"])
def test_parse_eps_rejects(text) -> None:
    with pytest.raises(RobenchError):
        parse_eps(text)


def test_parse_eps_list() -> None:
    assert parse_eps_list("2, 4,8/255") == (2.0, 4.0, 8.0)
    with pytest.raises(RobenchError, match="at least one"):
        parse_eps_list(" , ")


SUITE = """\
eps: [2, 4]
attacks:
  - name: fgsm
    label: predicted
  - name: pgd
    steps: 3
"""


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("eps: [2, 4]", "eps: [2, 4]\nextra: 1", "line 2: unknown key 'extra'"),
        ("    steps: 3", "    stepz: 3", "line 6: unknown key 'stepz' for attack 'pgd'"),
        ("    steps: 3", "    steps: ten", "line 6: 'steps' of attack 'pgd' must be int"),
        ("    steps: 3", "    steps: -3", "line 6: 'steps' of attack 'pgd' must be >= 0"),
        ("eps: [2, 4]", "eps: [2, -4]", "line 1: 'eps'"),
        ("  - name: pgd", "  - name: pgdd", "line 5: unknown attack 'pgdd'; did you mean pgd"),
        ("    label: predicted", "    label: maybe", "line 4: 'label' of attack 'fgsm' must be true | predicted"),
        ("    steps: 3", "    steps: 3\n  - name: fgsm", "attack id 'fgsm' is used twice"),
        ("    steps: 3", "    steps: [3", "line 7: invalid YAML"),
    ],
)
def test_suite_errors_name_line_and_key(old: str, new: str, message: str) -> None:
    text = SUITE.replace(old, new)
    with pytest.raises(RobenchError) as err:
        parse_suite(text, "s.yaml")
    assert message in str(err.value) and str(err.value).startswith("s.yaml")


def test_suite_parses_options_and_override() -> None:
    suite = parse_suite(SUITE, "s.yaml")
    assert suite.attacks[0].config.label == "predicted" and suite.attacks[1].config.steps == 3
    picked = override(suite, ("pgd", "bim"), (8.0,))
    assert [(a.id, a.eps) for a in picked.attacks] == [("pgd", (8.0,)), ("bim", (8.0,))]
    assert picked.attacks[0].config.steps == 3
    with pytest.raises(RobenchError, match="unknown attack"):
        override(suite, ("nope",))


# ---------------------------------------------------------------- data


def test_digits_split_is_fixed() -> None:
    test, train = load_digits_source("test"), load_digits_source("train")
    assert len(test.ids) == 360 and len(train.ids) == 1437
    assert test.ids[:3] == ["digits:0", "digits:5", "digits:10"] and train.ids[:2] == ["digits:1", "digits:2"]
    batch = next(test.batches(CFG, 50))
    assert batch.images.dtype == torch.float32 and batch.images.shape == (50, 3, 16, 16)
    assert batch.images.min() >= 0 and batch.images.max() <= 1 and batch.images.max() > 0.9
    assert batch.labels[:3].tolist() == [0, 5, 0] and batch.rows.tolist() == list(range(50))


def test_limit_is_a_seeded_sorted_subset() -> None:
    a, b, c = (load_digits_source("test", 20, seed).ids for seed in (0, 0, 1))
    assert a == b and a != c and len(a) == 20
    assert [int(i.split(":")[1]) for i in a] == sorted(int(i.split(":")[1]) for i in a)
    assert len(load_digits_source("test", 360).ids) == 360
    with pytest.raises(RobenchError, match="more than the 360 samples"):
        load_digits_source("test", 361)
    with pytest.raises(RobenchError, match="positive"):
        load_digits_source("test", 0)


def _write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(data) if gz else data)


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_idx(tmp_path: Path, gz: bool) -> None:
    images = np.arange(5 * 28 * 28).reshape(5, 28, 28) % 256
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", images, gz)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([3, 1, 4, 1, 5]), gz)
    src = open_source(f"fashion-mnist:{tmp_path}")
    assert src.ids == [f"fashion-mnist:test:{i}" for i in range(5)]
    batch = next(src.batches(InputConfig(size=(28, 28)), 5))
    assert batch.labels.tolist() == [3, 1, 4, 1, 5]
    assert torch.equal(batch.images[:, 0], torch.from_numpy(images).float() / 255)


def test_fashion_mnist_errors(tmp_path: Path) -> None:
    with pytest.raises(RobenchError, match="dataset-fashion-mnist"):
        open_source(f"fashion-mnist:{tmp_path}")
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x01\x02garbage")
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x01\x02garbage")
    with pytest.raises(RobenchError, match="cannot read IDX"):
        open_source(f"fashion-mnist:{tmp_path}")


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_system_package() -> None:
    src = open_source("fashion-mnist")
    assert len(src.ids) == 10_000 and src.num_classes == 10


def _folder(root: Path) -> Path:
    for cls, color in (("cat", (250, 0, 0)), ("dog", (0, 0, 250))):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (40, 30), color).save(root / cls / f"{i}.png")
    return root


def test_image_folder_gives_unit_floats(tmp_path: Path) -> None:
    src = open_source(str(_folder(tmp_path / "imgs")))
    assert src.ids == ["cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png"] and src.num_classes == 2
    batch = next(src.batches(CFG, 4))
    assert batch.images.dtype == torch.float32 and batch.images.shape == (4, 3, 16, 16)
    # timm's transform with normalize=False would give uint8 0..255; robench gives [0, 1]
    assert batch.images[0, 0].max() == pytest.approx(250 / 255) and batch.images.max() <= 1
    assert batch.labels.tolist() == [0, 0, 1, 1]


def test_image_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(RobenchError, match="no images found"):
        open_source(str(tmp_path / "empty"))
    root = _folder(tmp_path / "imgs")
    (root / "dog" / "2.png").write_bytes(os.urandom(64))
    with pytest.raises(RobenchError, match=r"dog/2\.png"):
        list(open_source(str(root)).batches(CFG, 8))


# ---------------------------------------------------------------- models


@pytest.mark.parametrize(
    ("text", "label", "name", "checkpoint"),
    [
        ("resnet18", "resnet18", "resnet18", None),
        ("lbl=resnet18@w.pth", "lbl", "resnet18", Path("w.pth")),
        ("path/x.safetensors", "x", None, Path("path/x.safetensors")),
        ("inception_v3.tf_adv_in1k", "inception_v3.tf_adv_in1k", "inception_v3.tf_adv_in1k", None),
    ],
)
def test_parse_spec(text, label, name, checkpoint) -> None:
    spec = parse_spec(text)
    assert (spec.label, spec.name, spec.checkpoint) == (label, name, checkpoint)


@pytest.mark.parametrize("text", ["a@", "@b", "x="])
def test_parse_spec_rejects(text: str) -> None:
    with pytest.raises(RobenchError, match="bad model spec"):
        parse_spec(text)


def test_normalized_applies_mean_and_std() -> None:
    inner = torch.nn.Identity()
    wrapped = Normalized(inner, (0.5, 0.25, 0.0), (0.5, 0.25, 2.0))
    x = torch.tensor([1.0, 0.5, 1.0]).view(1, 3, 1, 1)
    assert torch.equal(wrapped(x), torch.tensor([1.0, 1.0, 0.5]).view(1, 3, 1, 1))


def test_checkpoint_alone_and_weights_hash(default_checkpoint: Path) -> None:
    a = load_model(parse_spec(str(default_checkpoint)), num_classes=10)
    b = load_model(parse_spec(f"again={default_checkpoint}"), num_classes=10)
    assert (a.arch, a.num_classes, a.input.size, a.mean, a.std) == ("test_resnet", 10, (32, 32), (0.5,) * 3, (0.5,) * 3)
    assert a.weights_sha256 == b.weights_sha256 and a.weights == "checkpoint"
    with torch.no_grad():
        b.module.model.fc.bias[0] += 1e-3
    assert weights_sha256(b.module.model) != a.weights_sha256


def test_plain_state_dicts_load(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    model = timm.create_model("test_resnet", num_classes=7)
    torch.save(model.state_dict(), tmp_path / "w.pth")
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    for name in ("w.pth", "w.safetensors"):
        loaded = load_model(parse_spec(f"test_resnet@{tmp_path / name}"), num_classes=10)
        assert loaded.num_classes == 7  # from the checkpoint's classifier, not the dataset
        assert loaded.weights_sha256 == weights_sha256(model)


def test_unknown_names(tmp_path: Path) -> None:
    with pytest.raises(RobenchError, match="did you mean test_resnet"):
        load_model(parse_spec("test_resnt"), num_classes=10)
    with pytest.raises(RobenchError, match="unknown pretrained tag"):
        load_model(parse_spec("test_resnet.nonexistent_tag"), num_classes=10)
    with pytest.raises(RobenchError, match="carries no robench metadata"):
        (tmp_path / "w.pth").write_bytes(b"x")
        load_model(parse_spec(str(tmp_path / "w.pth")), num_classes=10)


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_with_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "side-effect"
    torch.save({"state_dict": _Payload(str(marker))}, tmp_path / "evil.pth")
    assert not marker.exists()
    with pytest.raises(RobenchError, match="refuses"):
        load_model(parse_spec(f"test_resnet@{tmp_path / 'evil.pth'}"), num_classes=10)
    assert not marker.exists()


def test_hub_weights_offline_give_one_clear_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from huggingface_hub import constants

    import robench.models

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # nothing cached
    monkeypatch.setattr(robench.models, "_reachable", lambda host, timeout=3.0: False)  # never download
    with pytest.raises(RobenchError) as err:
        load_model(parse_spec("test_resnet.r160_in1k"), num_classes=10)
    message = str(err.value)
    assert message == (
        "cannot load pretrained weights for 'test_resnet.r160_in1k': not cached and huggingface.co is unreachable; "
        "give local weights instead: test_resnet@/path/to/weights.safetensors"
    )


def test_unknown_timm_dataset_string() -> None:
    with pytest.raises(RobenchError, match="cannot open dataset torch/not-a-dataset"):
        open_source("torch/not-a-dataset")


def test_image_folder_splits(tmp_path: Path) -> None:
    _folder(tmp_path / "ds" / "train")
    _folder(tmp_path / "ds" / "val")
    (tmp_path / "ds" / "val" / "dog" / "1.png").unlink()
    assert len(open_source(str(tmp_path / "ds"), "train").ids) == 4
    assert open_source(str(tmp_path / "ds"), "test").ids == ["cat/0.png", "cat/1.png", "dog/0.png"]

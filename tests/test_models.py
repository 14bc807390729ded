"""Model specs and loading: [0, 1] wrappers, weights hashes, plain and unsafe checkpoints, offline hub weights."""

from __future__ import annotations

import dataclasses
import datetime
import re
import socket
import struct
import threading
import time
import zipfile
import zlib
from pathlib import Path

import pytest
import timm
import torch
from click.testing import CliRunner
from results_docs import PEAK_MB, one_error_line, run_peak
from torch import nn

from robench.cli.main import main
from robench.data import InputConfig
from robench.errors import RobenchError
from robench.models import Normalized, load_model, parse_spec, weights_sha256
from robench.models.checkpoint import data_config, input_metadata, save_checkpoint
from robench.models.preprocess import Preprocess

# ---------------------------------------------------------------- specs


@pytest.mark.parametrize(
    ("text", "label", "name", "checkpoint"),
    [
        ("resnet18", "resnet18", "resnet18", None),
        ("lbl=resnet18@w.pth", "lbl", "resnet18", Path("w.pth")),
        ("resnet18@dir/w.pth", "resnet18", "resnet18", Path("dir/w.pth")),
        ("path/x.safetensors", "x", None, Path("path/x.safetensors")),
        ("x.pth", "x", None, Path("x.pth")),
        ("./x", "x", None, Path("x")),
        ("mine=./x", "mine", None, Path("x")),
        ("mine=path/x.safetensors", "mine", None, Path("path/x.safetensors")),
        ("inception_v3.tf_adv_in1k", "inception_v3.tf_adv_in1k", "inception_v3.tf_adv_in1k", None),
        ("adv=inception_v3.tf_adv_in1k", "adv", "inception_v3.tf_adv_in1k", None),
        ("hf-hub:timm/resnet18.a1_in1k", "hf-hub:timm/resnet18.a1_in1k", "hf-hub:timm/resnet18.a1_in1k", None),
        # '=' inside a path is not a label
        ("runs/lr=0.1/m.safetensors", "m", None, Path("runs/lr=0.1/m.safetensors")),
        ("resnet18@runs/lr=0.1/w.pth", "resnet18", "resnet18", Path("runs/lr=0.1/w.pth")),
    ],
)
def test_parse_spec(text: str, label: str, name: str | None, checkpoint: Path | None) -> None:
    spec = parse_spec(text)
    assert (spec.text, spec.label, spec.name, spec.checkpoint) == (text, label, name, checkpoint)


@pytest.mark.parametrize("text", ["a@", "@b", "", "x=", "lbl=@w.pth", "lbl=resnet18@"])
def test_parse_spec_rejects(text: str) -> None:
    with pytest.raises(RobenchError, match=r"bad model spec .*use \[LABEL=\]NAME\[@CHECKPOINT\]"):
        parse_spec(text)


def test_odd_paths_are_paths_when_they_look_like_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("lr=0.1").mkdir()
    Path("lr=0.1/m.safetensors").write_bytes(b"")
    Path("v1@2.safetensors").write_bytes(b"")
    assert parse_spec("./lr=0.1/m.safetensors").checkpoint == Path("lr=0.1/m.safetensors")
    spec = parse_spec("./v1@2.safetensors")
    assert (spec.label, spec.name, spec.checkpoint) == ("v1@2", None, Path("v1@2.safetensors"))
    # without ./ the same texts read as LABEL=PATH and NAME@PATH, whatever files exist
    spec = parse_spec("lr=0.1/m.safetensors")
    assert (spec.label, spec.name, spec.checkpoint) == ("lr", None, Path("0.1/m.safetensors"))
    spec = parse_spec("v1@2.safetensors")
    assert (spec.label, spec.name, spec.checkpoint) == ("v1", "v1", Path("2.safetensors"))


def test_a_timm_name_wins_over_a_file_of_that_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("resnet18").write_bytes(b"")
    spec = parse_spec("resnet18")
    assert (spec.label, spec.name, spec.checkpoint) == ("resnet18", "resnet18", None)
    spec = parse_spec("./resnet18")
    assert (spec.label, spec.name, spec.checkpoint) == ("resnet18", None, Path("resnet18"))
    assert parse_spec("mine=resnet18").checkpoint is None and parse_spec("mine=./resnet18").label == "mine"


def test_zoo_spec(default_checkpoint: Path) -> None:
    spec = parse_spec("zoo:resnet-base")
    assert (spec.label, spec.name, spec.checkpoint) == ("resnet-base", None, default_checkpoint)
    with pytest.raises(RobenchError, match="unknown zoo model 'nope'"):
        parse_spec("zoo:nope")


# ---------------------------------------------------------------- the [0, 1] wrapper and the weights hash


def test_normalized_is_model_of_standardized_input() -> None:
    torch.manual_seed(0)
    inner = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.LazyLinear(4))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    wrapped = Normalized(inner, mean, std)
    x = torch.rand(2, 3, 8, 8)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    assert torch.equal(wrapped(x), inner((x - m) / s))
    assert not torch.equal(wrapped(x), inner(x))
    assert "mean" not in wrapped.state_dict() and "std" not in wrapped.state_dict()  # not saved with weights


def test_normalized_by_hand() -> None:
    wrapped = Normalized(nn.Identity(), (0.5, 0.25, 0.0), (0.5, 0.25, 2.0))
    x = torch.tensor([1.0, 0.5, 1.0]).view(1, 3, 1, 1)
    assert wrapped(x).flatten().tolist() == [1.0, 1.0, 0.5]


def test_normalized_gradient_flows_to_pixels() -> None:
    wrapped = Normalized(nn.Identity(), (0.5,), (0.25,))
    x = torch.rand(1, 1, 2, 2, requires_grad=True)
    wrapped(x).sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, 4.0))


# ---------------------------------------------------------------- an ensemble of wrapped models


def _member(seed: int, channels: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(channels, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 4))


def test_ensemble_averages_logits_or_probabilities_by_hand() -> None:
    from robench.models.ensemble import Ensemble

    a, b = _member(0), _member(1)
    x = torch.rand(3, 3, 8, 8)
    config = InputConfig(size=(8, 8))
    assert torch.equal(Ensemble([a, b], [config, config])(x), (a(x) + b(x)) / 2)
    probs = Ensemble([a, b], [config, config], by="probs")(x)
    torch.testing.assert_close(probs.softmax(1), (a(x).softmax(1) + b(x).softmax(1)) / 2)
    torch.testing.assert_close(probs.exp().sum(1), torch.ones(3))  # log-probabilities: their softmax is themselves
    same = Ensemble([a, a], [config, config])
    assert torch.equal(same(x), a(x))  # two copies: exactly the one model, as its examples then are


def test_ensemble_resizes_and_converts_the_pixels_for_each_member() -> None:
    """A member of another size or channel count sees the pixels resized (bilinear, antialiased) and converted."""
    import torch.nn.functional as F

    from robench.data import to_channels
    from robench.models.ensemble import Ensemble, ensemble_input

    big, small, gray = _member(0), _member(1), _member(2, channels=1)
    inputs = [InputConfig(size=(6, 6)), InputConfig(size=(12, 12)), InputConfig(channels=1, size=(12, 12))]
    assert ensemble_input(inputs) == inputs[1]  # the most values (3 x 12 x 12), the first of equals
    x = torch.rand(2, 3, 12, 12, requires_grad=True)
    down = F.interpolate(x, size=(6, 6), mode="bilinear", align_corners=False, antialias=True)
    want = (big(down) + small(x) + gray(to_channels(x, 1))) / 3
    got = Ensemble([big, small, gray], inputs)(x)
    torch.testing.assert_close(got, want)
    (grad,) = torch.autograd.grad(got.sum(), x)
    assert grad.abs().sum() > 0 and torch.isfinite(grad).all()  # the attacks' gradients flow through the resizing


def test_ensemble_by_loss_averages_the_members_cross_entropy_by_hand() -> None:
    """loss: the attacks' one CE gradient is that of the members' mean loss (not of their mean logits' loss)."""
    import torch.nn.functional as F

    from robench.attacks.base import input_gradient, loss_gradient
    from robench.models.ensemble import Ensemble

    a, b = _member(0), _member(1)
    config = InputConfig(size=(8, 8))
    x, y = torch.rand(5, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0])
    ensemble = Ensemble([a, b], [config, config], by="loss")
    xg = x.clone().requires_grad_(True)
    (want,) = torch.autograd.grad((F.cross_entropy(a(xg), y, reduction="sum")
                                   + F.cross_entropy(b(xg), y, reduction="sum")) / 2, xg)
    grad, logits = loss_gradient(ensemble, x, y)
    torch.testing.assert_close(grad, want)
    torch.testing.assert_close(input_gradient(ensemble, x, y), want)
    assert torch.equal(logits, ensemble(x).detach()) and torch.equal(ensemble(x), (a(x) + b(x)) / 2)
    by_logits = loss_gradient(Ensemble([a, b], [config, config]), x, y)[0]
    assert not torch.allclose(by_logits, want)  # the two fusions step differently


def test_ensemble_modes_other_than_logits_probs_and_loss_are_refused() -> None:
    from robench.models.ensemble import Ensemble, EnsembleSpec

    with pytest.raises(RobenchError, match="be logits, probs or loss"):
        EnsembleSpec(("a", "b"), "max")
    with pytest.raises(ValueError, match="be logits, probs or loss"):
        Ensemble([_member(0), _member(1)], [InputConfig(), InputConfig()], "max")


def test_weights_sha256_stable_and_sensitive(default_checkpoint: Path) -> None:
    a = load_model(parse_spec(str(default_checkpoint)), num_classes=10)
    b = load_model(parse_spec(str(default_checkpoint)), num_classes=10)
    assert len(a.weights_sha256) == 64 and a.weights_sha256 == b.weights_sha256
    assert weights_sha256(a.module.model) == a.weights_sha256  # the timm model's own state dict
    with torch.no_grad():
        b.module.model.fc.weight[0, 0] += 1e-6
    assert weights_sha256(b.module.model) != a.weights_sha256
    c = load_model(parse_spec(str(default_checkpoint)), num_classes=10)
    c.module.model.bn1.running_mean[0] += 1.0  # buffers count too
    assert weights_sha256(c.module.model) != a.weights_sha256


HALF_NET = """
import torch
from torch import nn


class Low(nn.Module):
    def __init__(self, num_classes=10, dtype="float16"):
        super().__init__()
        torch.manual_seed(0)
        self.dtype = getattr(torch, dtype)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))

    def forward(self, x):
        return self.net(x).to(self.dtype)


def half(num_classes=10):
    return Low(num_classes, "float16")


def bf16(num_classes=10):
    return Low(num_classes, "bfloat16")


def full(num_classes=10):
    return Low(num_classes, "float32")
"""


@pytest.mark.parametrize(("factory", "dtype", "bits"), [("half", "float16", 11), ("bf16", "bfloat16", 8)])
def test_16_bit_logits_are_said_once(tmp_path: Path, factory: str, dtype: str, bits: int) -> None:
    """Issue 26: 16-bit logits changed 11 of 40 attacked predictions against float32 without a word."""
    (tmp_path / "low.py").write_text(HALF_NET)
    res = CliRunner().invoke(main, ["eval", "-m", f"{tmp_path / 'low.py'}:{factory}", "--attack", "fgsm", "--eps",
                                    "4,8", "--limit", "8", "-q", "--no-health"])
    assert res.exit_code == 0, res.stderr
    assert res.stderr.count("logits, so the attacks' loss and gradients run at") == 1
    line = next(line for line in res.stderr.splitlines() if "mantissa" in line)
    assert f"model '{factory}' gives {dtype} logits" in line and f"run at {bits} bits of mantissa" in line
    assert "model.float()" in line


def test_float32_logits_say_nothing_about_precision(tmp_path: Path) -> None:
    (tmp_path / "low.py").write_text(HALF_NET)
    res = CliRunner().invoke(main, ["eval", "-m", f"{tmp_path / 'low.py'}:full", "--attack", "fgsm", "--eps", "8",
                                    "--limit", "8", "-q", "--no-health"])
    assert res.exit_code == 0, res.stderr
    assert "mantissa" not in res.stderr


# ---------------------------------------------------------------- robench checkpoints


def test_default_checkpoint_alone(default_checkpoint: Path) -> None:
    model = load_model(parse_spec(str(default_checkpoint)), num_classes=3)  # its metadata wins over the dataset
    assert (model.arch, model.num_classes, model.weights) == ("test_resnet", 10, "checkpoint")
    assert (model.input.channels, model.input.size) == (3, (32, 32))
    assert model.mean == (0.5, 0.5, 0.5) and model.std == (0.5, 0.5, 0.5)
    assert model.spec.label == default_checkpoint.name.split(".")[0] and not model.module.training
    logits = model.module(torch.rand(2, 3, 32, 32))
    assert logits.shape == (2, 10)
    described = model.describe()
    assert described["arch"] == "test_resnet" and described["input_size"] == [3, 32, 32]
    assert described["weights_sha256"] == model.weights_sha256


def test_zoo_checkpoints_without_crop_mode_load_with_center_crop(default_checkpoint: Path) -> None:
    from robench.models.checkpoint import read_metadata

    assert "crop_mode" not in read_metadata(default_checkpoint)
    assert load_model(parse_spec(str(default_checkpoint)), num_classes=10).input.crop_mode == "center"


def test_default_checkpoint_with_a_name(default_checkpoint: Path) -> None:
    by_name = load_model(parse_spec(f"test_resnet@{default_checkpoint}"), num_classes=10)
    alone = load_model(parse_spec(str(default_checkpoint)), num_classes=10)
    assert by_name.weights_sha256 == alone.weights_sha256 and by_name.spec.label == "test_resnet"


def test_robench_checkpoint_roundtrip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    net = timm.create_model("test_efficientnet", num_classes=4)
    meta = {"arch": "test_efficientnet", "num_classes": 4, "input_size": [3, 24, 24], "mean": [0.1] * 3,
            "std": [0.2] * 3}
    save_checkpoint(tmp_path / "e.safetensors", net, meta)
    loaded = load_model(parse_spec(str(tmp_path / "e.safetensors")), num_classes=10)
    assert (loaded.arch, loaded.num_classes, loaded.input.size) == ("test_efficientnet", 4, (24, 24))
    assert loaded.mean == (0.1,) * 3 and loaded.std == (0.2,) * 3
    assert loaded.weights_sha256 == weights_sha256(net)
    assert loaded.input.crop_mode == "center" and "crop_mode" not in loaded.describe()  # not recorded: center
    save_checkpoint(tmp_path / "squash.safetensors", net, {**meta, "crop_mode": "squash", "crop_pct": 0.9})
    squash = load_model(parse_spec(str(tmp_path / "squash.safetensors")), num_classes=10)
    assert (squash.input.crop_mode, squash.input.crop_pct) == ("squash", 0.9)
    assert squash.describe()["crop_mode"] == "squash" and squash.describe()["crop_pct"] == 0.9


def test_input_metadata_round_trips_through_the_data_config() -> None:
    """One mapping writes a model's input as metadata and reads it back over the architecture's defaults."""
    defaults = {"input_size": (3, 160, 160), "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3,
                "crop_pct": 0.95, "crop_mode": "border"}
    squash = InputConfig(channels=3, size=(24, 20), interpolation="bicubic", crop_pct=0.875, crop_mode="squash")
    meta = input_metadata(squash, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    assert meta == {"input_size": [3, 24, 20], "interpolation": "bicubic", "crop_pct": 0.875, "mean": [0.1, 0.2, 0.3],
                    "std": [0.4, 0.5, 0.6], "crop_mode": "squash"}
    cfg = data_config(meta, defaults)
    assert InputConfig.from_timm(cfg) == squash and (cfg["mean"], cfg["std"]) == ([0.1, 0.2, 0.3], [0.4, 0.5, 0.6])
    center = InputConfig(size=(32, 32))
    meta = input_metadata(center, (0.5,) * 3, (0.5,) * 3)
    assert "crop_mode" not in meta  # the default is left out: older checkpoints keep their bytes
    assert InputConfig.from_timm(data_config({"arch": "x", **meta}, defaults)) == center  # not the arch's "border"
    assert data_config({}, defaults) == defaults  # plain weights: the architecture's own config


# ---------------------------------------------------------------- names


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(RobenchError) as err:
        load_model(parse_spec("test_resnt"), num_classes=10)
    assert str(err.value).startswith("unknown model 'test_resnt'; did you mean ") and "test_resnet" in str(err.value)
    with pytest.raises(RobenchError, match=r"unknown model 'qqqqqqqq'; see `timm.list_models\(\)`"):
        load_model(parse_spec("qqqqqqqq"), num_classes=10)


def test_unknown_pretrained_tag() -> None:
    with pytest.raises(RobenchError) as err:
        load_model(parse_spec("test_resnet.no_such_tag"), num_classes=10)
    assert str(err.value).startswith("unknown pretrained tag in 'test_resnet.no_such_tag'; known for test_resnet: ")
    assert "test_resnet.r160_in1k" in str(err.value)


def test_plain_name_gives_random_weights() -> None:
    model = load_model(parse_spec("test_resnet"), num_classes=7)
    assert (model.weights, model.num_classes, model.arch) == ("random", 7, "test_resnet")


# ---------------------------------------------------------------- plain state dicts


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=10)


def test_plain_state_dicts_load_as_name_at_file(tmp_path: Path, resnet: nn.Module) -> None:
    from safetensors.torch import save_file

    torch.save(resnet.state_dict(), tmp_path / "w.pth")
    torch.save({"state_dict": resnet.state_dict(), "epoch": 3}, tmp_path / "trainer.pth")
    torch.save({"module." + k: v for k, v in resnet.state_dict().items()}, tmp_path / "dataparallel.pt")
    save_file(resnet.state_dict(), str(tmp_path / "w.safetensors"))
    x = torch.rand(2, 3, 32, 32)
    for name in ("w.pth", "trainer.pth", "dataparallel.pt", "w.safetensors"):
        loaded = load_model(parse_spec(f"test_resnet@{tmp_path / name}"), num_classes=10)
        assert loaded.weights_sha256 == weights_sha256(resnet), name
        assert (loaded.arch, loaded.weights, loaded.spec.label) == ("test_resnet", "checkpoint", "test_resnet")
        mean = torch.tensor(loaded.mean).view(1, 3, 1, 1)
        std = torch.tensor(loaded.std).view(1, 3, 1, 1)
        resnet.eval()
        assert torch.allclose(loaded.module(x), resnet((x - mean) / std))


def test_plain_state_dict_num_classes_come_from_its_head(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    seven = timm.create_model("test_resnet", num_classes=7)
    torch.save(seven.state_dict(), tmp_path / "seven.pth")
    save_file(seven.state_dict(), str(tmp_path / "seven.safetensors"))
    for name in ("seven.pth", "seven.safetensors"):
        loaded = load_model(parse_spec(f"test_resnet@{tmp_path / name}"), num_classes=10)
        assert loaded.num_classes == 7 and loaded.weights_sha256 == weights_sha256(seven), name


def test_plain_checkpoint_alone_needs_a_name(tmp_path: Path, resnet: nn.Module) -> None:
    from safetensors.torch import save_file

    save_file(resnet.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save(resnet.state_dict(), tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        with pytest.raises(RobenchError, match=r"carries no robench metadata .*give it as NAME@"):
            load_model(parse_spec(str(tmp_path / name)), num_classes=10)


def test_other_architecture_names_missing_and_unexpected_keys(tmp_path: Path) -> None:
    effnet = timm.create_model("test_efficientnet", num_classes=10)
    torch.save(effnet.state_dict(), tmp_path / "effnet.pth")
    with pytest.raises(RobenchError) as err:
        load_model(parse_spec(f"test_resnet@{tmp_path / 'effnet.pth'}"), num_classes=10)
    message = str(err.value)
    assert message.startswith(f"checkpoint {tmp_path / 'effnet.pth'} does not fit test_resnet: ")
    assert "missing keys (conv1.0.weight" in message and "unexpected keys (conv_stem.weight" in message
    assert message.endswith("is it the right architecture?") and "\n" not in message


def test_wrongly_shaped_keys_are_named(tmp_path: Path, resnet: nn.Module) -> None:
    state = dict(resnet.state_dict())
    state["conv1.0.weight"] = torch.zeros(1, 2, 3, 3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(RobenchError, match=r"does not fit test_resnet: 1 wrongly shaped keys \(conv1\.0\.weight\)"):
        load_model(parse_spec(f"test_resnet@{tmp_path / 'bad.pth'}"), num_classes=10)


def test_missing_and_corrupt_checkpoints(tmp_path: Path, resnet: nn.Module) -> None:
    with pytest.raises(RobenchError, match="checkpoint not found"):
        load_model(parse_spec(f"test_resnet@{tmp_path / 'none.pth'}"), num_classes=10)
    (tmp_path / "zeros.pth").write_bytes(b"\x00" * 100)
    with pytest.raises(RobenchError, match="cannot load checkpoint .*zeros.pth: it is corrupt or not a PyTorch"):
        load_model(parse_spec(f"test_resnet@{tmp_path / 'zeros.pth'}"), num_classes=10)
    torch.save(resnet.state_dict(), tmp_path / "w.pth")
    data = (tmp_path / "w.pth").read_bytes()
    (tmp_path / "half.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(RobenchError, match="cannot load checkpoint .*half.pth"):
        load_model(parse_spec(f"test_resnet@{tmp_path / 'half.pth'}"), num_classes=10)
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(RobenchError, match="cannot read checkpoint .*bad.safetensors"):
        load_model(parse_spec(str(tmp_path / "bad.safetensors")), num_classes=10)


def test_integer_weights_for_float_parameters_are_refused(tmp_path: Path, resnet: nn.Module,
                                                          default_checkpoint: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = {k: (v.to(torch.int8) if v.is_floating_point() else v) for k, v in resnet.state_dict().items()}
    torch.save(state, tmp_path / "int8.pth")
    with pytest.raises(RobenchError, match=r"holds integer tensors where test_resnet has float ones: \d+ integer keys "
                                           r"\(conv1\.0\.weight, .*dequantize it"):
        load_model(parse_spec(f"test_resnet@{tmp_path / 'int8.pth'}"), num_classes=10)
    zoo = load_file(str(default_checkpoint))
    save_file({k: (v.to(torch.int8) if v.is_floating_point() else v) for k, v in zoo.items()},
              str(tmp_path / "int8.safetensors"))
    arch = load_model(parse_spec(str(default_checkpoint)), num_classes=10).arch
    res = CliRunner().invoke(main, ["eval", f"{arch}@{tmp_path / 'int8.safetensors'}", "--attack", "fgsm", "--eps", "8",
                                    "-q", "--limit", "4"])
    one_error_line(res, 2, "int8.safetensors holds integer tensors", "dequantize")
    # integer buffers (num_batches_tracked) load as they are: test_plain_state_dicts_load_as_name_at_file


class _SideEffect:
    """Unpickling this opens (creates) a file: stands for any code hidden in a pickle."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickled_code_is_refused_and_never_runs(tmp_path: Path, resnet: nn.Module) -> None:
    marker = tmp_path / "side-effect"
    torch.save({"state_dict": resnet.state_dict(), "hook": _SideEffect(str(marker))}, tmp_path / "evil.pth")
    assert not marker.exists()
    with pytest.raises(RobenchError) as err:
        load_model(parse_spec(f"test_resnet@{tmp_path / 'evil.pth'}"), num_classes=10)
    assert re.search(r"refused: it needs pickled objects \([\w.]*open\)", str(err.value)), str(err.value)
    assert not marker.exists()


@dataclasses.dataclass
class _TrainArgs:
    """A training script's settings, saved beside the weights as many scripts do."""

    lr: float = 0.1


def test_a_checkpoint_needing_pickled_classes_is_refused_naming_them(tmp_path: Path, resnet: nn.Module) -> None:
    """torch's own message is a dozen lines about weights_only; the one line names the globals and the fix."""
    torch.save({"state_dict": resnet.state_dict(), "args": _TrainArgs(), "when": datetime.date(2020, 1, 1)},
               tmp_path / "args.pth")
    res = CliRunner().invoke(main, ["eval", f"test_resnet@{tmp_path / 'args.pth'}", "--attack", "fgsm", "--eps", "8",
                                    "-q", "--limit", "4", "--out", str(tmp_path / "r.json")])
    line = one_error_line(res, 2, "args.pth: refused: it needs pickled objects (", "datetime.date",
                          f"{__name__}._TrainArgs", "save a plain state dict (torch.save(model.state_dict(), FILE)) "
                                                     "or .safetensors")
    assert "weights_only" not in line and not (tmp_path / "r.json").exists()


def test_whole_pickled_module_is_refused(tmp_path: Path, resnet: nn.Module) -> None:
    torch.save(resnet, tmp_path / "model.pth")
    with pytest.raises(RobenchError, match=r"refused: it needs pickled objects \(timm\.[\w.]+, "
                                           r".*timm\.models\.resnet\.ResNet.* and \d+ more\), which robench "
                                           r"does not load"):
        load_model(parse_spec(f"test_resnet@{tmp_path / 'model.pth'}"), num_classes=10)


def _with_kwargs(path: Path, resnet: nn.Module, kwargs: object) -> Path:
    save_checkpoint(path, resnet, {"arch": "test_resnet", "num_classes": 10, "model_kwargs": kwargs})
    return path


def test_model_kwargs_naming_another_file_are_refused_and_it_is_never_read(
        tmp_path: Path, resnet: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "side-effect"
    torch.save({"state_dict": resnet.state_dict(), "hook": _SideEffect(str(marker))}, tmp_path / "other.pth")
    loads = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a))
    ckpt = _with_kwargs(tmp_path / "m.safetensors", resnet, {"checkpoint_path": str(tmp_path / "other.pth")})
    res = CliRunner().invoke(main, ["eval", str(ckpt), "--attack", "fgsm", "--eps", "8", "-q", "--limit", "4"])
    line = one_error_line(res, 2, "model_kwargs", "checkpoint_path", "refuses", str(ckpt))
    assert "remove it from the metadata" in line
    assert loads == [] and not marker.exists()


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"pretrained": True, "pretrained_cfg_overlay": {"file": "x.pth"}}, "sets pretrained, pretrained_cfg_overlay,"),
    ({"cache_dir": "/tmp", "pretrained_cfg": {}}, "sets cache_dir, pretrained_cfg,"),
    (["checkpoint_path"], 'field model_kwargs: expected an object, got ["checkpoint_path"]'),
    ({"drop_rate": {"nested": 1}}, "model_kwargs.drop_rate in its metadata is not a number"),
])
def test_model_kwargs_outside_the_allowlist_are_refused(tmp_path: Path, resnet: nn.Module, kwargs: object,
                                                         needle: str) -> None:
    ckpt = _with_kwargs(tmp_path / "m.safetensors", resnet, kwargs)
    with pytest.raises(RobenchError, match=re.escape(needle)):
        load_model(parse_spec(str(ckpt)), num_classes=10)


def test_a_hub_architecture_named_by_a_checkpoint_is_refused(tmp_path: Path, resnet: nn.Module,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """timm would download a hub model's config for it, even without pretrained weights."""
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: pytest.fail("timm.create_model called"))
    save_checkpoint(tmp_path / "m.safetensors", resnet, {"arch": "hf-hub:someone/model", "num_classes": 10})
    with pytest.raises(RobenchError, match=r"names 'hf-hub:someone/model' as its architecture; robench fetches"):
        load_model(parse_spec(str(tmp_path / "m.safetensors")), num_classes=10)


@pytest.mark.parametrize(("meta", "needle"), [
    ({"num_classes": "abc"}, 'field num_classes: expected a whole number, got "abc"'),
    ({"mean": ["a"], "std": [1.0]}, 'field mean[0]: expected a number, got "a"'),
    ({"input_size": [3, 0, 32]}, "field input_size[1]: expected a number >= 1, got 0"),
    ({"input_size": [3, -32, 32]}, "field input_size[1]: expected a number >= 1, got -32"),
    ({"input_size": 32}, "field input_size: expected a list, got 32"),
    ({"input_size": [4, 32, 32]}, "field input_size: expected [C, H, W] with C 1 or 3, got [4, 32, 32]"),
    ({"arch": 5}, "field arch: expected a string, got 5"),
    ({"model_kwargs": "x"}, 'field model_kwargs: expected an object, got "x"'),
    ({"classes": ["a", "b"]}, "field classes: expected 10 class names, as num_classes says"),
    ({"std": [0.0, 1.0, 1.0]}, "field std[0]: expected a number > 0, got 0.0"),
    ({"crop_pct": 2}, "field crop_pct: expected a number <= 1, got 2"),
    ({"input_size": [3, 16384, 16384]}, "field input_size[1]: expected a number <= 4096, got 16384"),
])
def test_bad_checkpoint_metadata_is_one_line_naming_the_field(tmp_path: Path, resnet: nn.Module, meta: dict,
                                                              needle: str) -> None:
    """Metadata robench did not write (edited, or made by another tool) is checked on read: exit 2, not 3."""
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(ckpt, resnet, {"arch": "test_resnet", "num_classes": 10, **meta})
    before = ckpt.read_bytes()
    out = tmp_path / "r.json"
    res = CliRunner().invoke(main, ["eval", str(ckpt), "--attack", "fgsm", "--eps", "8", "-q", "--limit", "4",
                                    "--out", str(out)])
    line = one_error_line(res, 2, f"checkpoint {ckpt}: robench metadata: ", needle)
    assert line.endswith("fix that field, or give the weights as NAME@FILE without robench metadata")
    assert not out.exists() and ckpt.read_bytes() == before


def test_allowed_model_kwargs_reach_timm(tmp_path: Path, resnet: nn.Module) -> None:
    ckpt = _with_kwargs(tmp_path / "m.safetensors", resnet, {"drop_rate": 0.25})
    loaded = load_model(parse_spec(str(ckpt)), num_classes=10)
    assert loaded.module.model.drop_rate == 0.25 and loaded.weights_sha256 == weights_sha256(resnet)


def _deflated_zeros(mib: int) -> bytes:
    """A raw deflate stream of ``mib`` MiB of zeros, about 1 KB a MiB: one flushed block repeated."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = deflate.compress(bytes(2**20)) + deflate.flush(zlib.Z_FULL_FLUSH)
    return block * mib + deflate.flush()


def _zip(records: list[tuple[str, int, bytes, int, int]]) -> bytes:
    """A zip archive written by hand from (name, method, data, crc, inflated size): zipfile cannot store raw deflate."""
    out, central = b"", b""
    for name, method, data, crc, size in records:
        fixed = struct.pack("<HHHHHLLLHH", 20, 0, method, 0, 33, crc, len(data), size, len(name), 0)
        central += b"PK\x01\x02" + struct.pack("<H", 20) + fixed + struct.pack("<HHHLL", 0, 0, 0, 0, len(out))
        central += name.encode()
        out += b"PK\x03\x04" + fixed + name.encode() + data
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(records), len(records), len(central), len(out), 0)
    return out + central + end


def _pth_bomb(path: Path) -> Path:
    """A torch.save checkpoint whose one tensor record is 4095 MiB of zeros deflated into 4 MB."""
    torch.save({"w": torch.zeros(16, dtype=torch.uint8)}, path)
    with zipfile.ZipFile(path) as saved:
        records = [(i.filename, 0, saved.read(i), i.CRC, i.file_size) for i in saved.infolist()]
    records = [(n, 8, _deflated_zeros(4095), 0, 4095 * 2**20) if n.endswith("data/0") else (n, m, d, c, z)
               for n, m, d, c, z in records]
    path.write_bytes(_zip(records))
    return path


@pytest.mark.slow
def test_a_zip_bomb_checkpoint_is_refused_before_it_inflates(tmp_path: Path) -> None:
    bomb = _pth_bomb(tmp_path / "bomb.pth")
    assert bomb.stat().st_size < 5 * 2**20
    code, lines, grown_mb = run_peak("eval", f"test_resnet@{bomb}", "--attack", "fgsm", "--eps", "8", "-q",
                                    "--limit", "4")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"robench: error: cannot load checkpoint {bomb}: its record ") and \
        "is compressed (zip method 8)" in lines[0] and "decompression bomb" in lines[0]
    assert grown_mb < PEAK_MB, grown_mb


def test_a_zip_claiming_more_than_it_holds_is_refused(tmp_path: Path, resnet: nn.Module) -> None:
    torch.save(resnet.state_dict(), tmp_path / "w.pth")
    with zipfile.ZipFile(tmp_path / "w.pth") as saved:
        records = [(i.filename, 0, saved.read(i), i.CRC, i.file_size) for i in saved.infolist()]
    name, method, data, crc, _ = records[-1]
    (tmp_path / "lies.pth").write_bytes(_zip([*records[:-1], (name, method, data, crc, 2**31)]))
    with pytest.raises(RobenchError, match=r"lies.pth: its records claim \d+ bytes in a file of \d+; it is corrupt"):
        load_model(parse_spec(f"test_resnet@{tmp_path / 'lies.pth'}"), num_classes=10)


@pytest.mark.slow
def test_a_legacy_checkpoint_loads_and_one_torch_cannot_read_is_one_line(tmp_path: Path, resnet: nn.Module) -> None:
    """Legacy (pre-zip) checkpoints still load; pickle protocol 4 in one gives one line, not torch's warning too."""
    torch.save(resnet.state_dict(), tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    loaded = load_model(parse_spec(f"test_resnet@{tmp_path / 'legacy.pth'}"), num_classes=10)
    assert loaded.weights_sha256 == weights_sha256(resnet)
    torch.save(resnet.state_dict(), tmp_path / "p4.pth", _use_new_zipfile_serialization=False, pickle_protocol=4)
    code, lines, _ = run_peak("eval", f"test_resnet@{tmp_path / 'p4.pth'}", "--attack", "fgsm", "--eps", "8", "-q",
                              "--limit", "4")
    assert code == 2 and len(lines) == 1, lines
    assert "p4.pth: it is pickled with protocol 4, which torch.load(weights_only=True) cannot read" in lines[0]


def test_a_legacy_checkpoint_claiming_more_than_it_holds_is_refused(tmp_path: Path) -> None:
    """A legacy pickle claiming an 8 GiB tensor: torch checks the bytes that follow, so nothing is read or inflated."""
    torch.save({"w": torch.zeros(10)}, tmp_path / "l.pth", _use_new_zipfile_serialization=False)
    data = (tmp_path / "l.pth").read_bytes()
    numel = b"cpuq\x06K\nNtq"  # the storage's persistent id: ..., location, 10 elements
    assert numel in data
    (tmp_path / "l.pth").write_bytes(data.replace(numel, b"cpuq\x06J" + struct.pack("<i", 2**31 - 1) + b"Ntq"))
    with pytest.raises(RobenchError, match="l.pth: it is corrupt: a tensor claims more bytes than the file holds"):
        load_model(parse_spec(f"test_resnet@{tmp_path / 'l.pth'}"), num_classes=10)


# ---------------------------------------------------------------- hub weights, offline


@pytest.mark.parametrize(("spec", "pretrained"), [("test_resnet.r160_in1k", False), ("test_resnet", True)])
def test_hub_weights_offline_fail_fast(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, spec: str,
                                       pretrained: bool) -> None:
    from huggingface_hub import constants

    import robench.models.hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # nothing cached
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def no_network(*args, **kwargs):
        raise AssertionError("robench probed the network although HF_HUB_OFFLINE is set")

    monkeypatch.setattr(robench.models.hub, "_reachable", no_network)
    start = time.monotonic()
    with pytest.raises(RobenchError) as err:
        load_model(parse_spec(spec), num_classes=10, pretrained=pretrained)
    assert time.monotonic() - start < 20
    message = str(err.value)
    assert message.startswith(f"cannot load pretrained weights for '{spec}'") and "HF_HUB_OFFLINE" in message
    assert message.endswith("give local weights instead: test_resnet@/path/to/weights.safetensors")
    assert not list((tmp_path / "hub").glob("*"))


def test_hub_weights_unreachable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from huggingface_hub import constants

    import robench.models.hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    hosts: list[tuple[str, int]] = []
    monkeypatch.setattr(robench.models.hub, "_reachable", lambda host, port: hosts.append((host, port)) or False)
    with pytest.raises(RobenchError) as err:
        load_model(parse_spec("test_resnet.r160_in1k"), num_classes=10)
    assert hosts == [("huggingface.co", 443)]
    assert str(err.value) == (
        "cannot load pretrained weights for 'test_resnet.r160_in1k': not cached and huggingface.co is unreachable "
        "(no answer within 5 s); give local weights instead: test_resnet@/path/to/weights.safetensors, or copy a "
        "Hugging Face cache holding them (HF_HOME) and set HF_HUB_OFFLINE=1"
    )


def _closed_port() -> int:
    """A local port nothing listens on: connecting to it is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(key, raising=False)


def test_pretrained_with_hf_endpoint_at_a_closed_port_fails_in_seconds(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    """Issue 26: offline --pretrained took about 100 s to say so; HF_ENDPOINT's own port is the one asked."""
    from huggingface_hub import constants

    port = _closed_port()
    _no_proxy(monkeypatch)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")  # what huggingface_hub read at import
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    start = time.monotonic()
    res = CliRunner().invoke(main, ["eval", "-m", "test_resnet", "--pretrained", "--attack", "fgsm", "--eps", "8",
                                    "--limit", "2", "-q", "--no-health"])
    assert time.monotonic() - start < 15
    one_error_line(res, 2, f"not cached and 127.0.0.1:{port} is unreachable", "test_resnet@/path/to/",
                   "HF_HUB_OFFLINE=1")


def test_hub_probe_is_bounded_when_the_name_lookup_hangs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A name lookup without network can take minutes, and a socket timeout does not bound it."""
    from huggingface_hub import constants

    import robench.models.hub

    _no_proxy(monkeypatch)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(robench.models.hub, "PROBE_TIMEOUT", 0.5, raising=False)
    release = threading.Event()
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: release.wait(30) and [])
    start = time.monotonic()
    try:
        with pytest.raises(RobenchError, match=r"huggingface.co is unreachable \(no answer within 0.5 s\)"):
            load_model(parse_spec("test_resnet.r160_in1k"), num_classes=10)
        assert time.monotonic() - start < 10
    finally:
        release.set()


def test_hub_probe_asks_the_port_given_or_the_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    import robench.models.hub

    _no_proxy(monkeypatch)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        open_port, closed = server.getsockname()[1], _closed_port()
        assert robench.models.hub._reachable("127.0.0.1", open_port, timeout=2)
        assert not robench.models.hub._reachable("127.0.0.1", closed, timeout=2)
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{closed}")  # the proxy does not answer
        assert not robench.models.hub._reachable("127.0.0.1", open_port, timeout=2)
        monkeypatch.setenv("HTTPS_PROXY", f"127.0.0.1:{open_port}")  # a proxy written without a scheme answers
        assert robench.models.hub._reachable("127.0.0.1", closed, timeout=2)


# ---------------------------------------------------------------- preprocessing overrides


def test_spec_query_sets_one_models_preprocessing() -> None:
    spec = parse_spec("a=resnet18@w.pth?mean=0.1307&std=0.3081&input-size=1,28,28&interpolation=bicubic&crop-pct=1")
    assert (spec.label, spec.name, spec.checkpoint) == ("a", "resnet18", Path("w.pth"))
    assert spec.preprocess == Preprocess(mean=(0.1307,), std=(0.3081,), input_size=(1, 28, 28),
                                         interpolation="bicubic", crop_pct=1.0)
    assert parse_spec("runs/what?.safetensors").checkpoint == Path("runs/what?.safetensors")  # no key=value tail


@pytest.mark.parametrize(("text", "needle"), [
    ("resnet18?mean=a", "mean must be comma-separated numbers"),
    ("resnet18?input-size=3,32", "input-size must be C,H,W with C 1 or 3"),
    ("resnet18?input-size=2,32,32", "input-size must be C,H,W with C 1 or 3"),
    ("resnet18?crop-pct=1.5", "crop-pct must lie in (0, 1]"),
    ("resnet18?crop-pct=0.5,0.5", "crop-pct must be one number"),
    ("resnet18?interpolation=lanczos", "interpolation must be one of bilinear, bicubic, nearest"),
    ("resnet18?std=1,0,1", "std must be > 0"),
    ("resnet18?mean=nan", "mean must be one finite number per channel"),
    ("resnet18?size=3", "unknown setting 'size'"),
    # sizes that parse but cannot run: a batch of them allocated 240 GB, or torch overflowed (exit 3)
    ("resnet18?input-size=3,100000,100000", "input-size must be C,H,W with C 1 or 3 and H, W in [1, 4096], "
                                            "got 3,100000,100000"),
    (f"resnet18?input-size=3,{10**30},8", "and H, W in [1, 4096]"),
])
def test_bad_spec_queries(text: str, needle: str) -> None:
    with pytest.raises(RobenchError, match=re.escape(needle)) as info:
        parse_spec(text)
    assert str(info.value).startswith(f"model spec '{text}': ")


def test_a_specs_overrides_win_over_everyones() -> None:
    every = Preprocess(mean=(0.5,), std=(0.5,), crop_pct=0.9)
    assert Preprocess(std=(0.25,)).over(every) == Preprocess(mean=(0.5,), std=(0.25,), crop_pct=0.9)
    assert not Preprocess() and Preprocess(crop_pct=1.0)


def test_overrides_change_the_wrapper_and_the_record(default_checkpoint: Path) -> None:
    """--mean/--std for every model, a spec's query for one: the numbers the wrapper applies, and the results."""
    every = Preprocess(mean=(0.4,), std=(0.2,))
    plain = load_model(parse_spec(str(default_checkpoint)), 10, preprocess=every)
    own = load_model(parse_spec(f"{default_checkpoint}?std=0.3,0.3,0.3&input-size=3,24,24"), 10, preprocess=every)
    assert plain.module.mean.flatten().tolist() == pytest.approx([0.4] * 3)
    assert plain.module.std.flatten().tolist() == pytest.approx([0.2] * 3)
    assert own.describe()["std"] == pytest.approx([0.3] * 3) and own.describe()["mean"] == pytest.approx([0.4] * 3)
    assert own.input.size == (24, 24) and plain.input.size == (32, 32)  # the checkpoint's 32 px otherwise
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(plain.module(x), plain.module.model((x - 0.4) / 0.2))


# ---------------------------------------------------------------- channels


@pytest.fixture(scope="module")
def gray_resnet(tmp_path_factory: pytest.TempPathFactory, default_checkpoint: Path) -> Path:
    """The zoo's resnet-base as a 1-channel model (timm in_chans=1): its stem's weights summed over RGB.

    On gray images it then computes what the 3-channel model does on them replicated, so it is
    a trained 1-channel model (about 98% on digits) with no training.
    """
    from safetensors.torch import load_file

    state = load_file(str(default_checkpoint))
    state["conv1.0.weight"] = state["conv1.0.weight"].sum(1, keepdim=True)
    path = tmp_path_factory.mktemp("gray") / "gray.pth"
    torch.save(state, path)
    return path


def _gray_model(gray_resnet: Path, size: int = 32) -> object:
    return load_model(parse_spec(f"test_resnet@{gray_resnet}?input-size=1,{size},{size}&crop-pct=1"), 10)


def _predict(model: nn.Module, x: torch.Tensor) -> list[int]:
    """By hand: the 1-channel resnet-base's normalization (mean 0.5, std 0.5), then its forward."""
    with torch.no_grad():
        return model((x - 0.5) / 0.5).argmax(1).tolist()


def test_one_channel_timm_model_on_digits(gray_resnet: Path) -> None:
    import torch.nn.functional as F

    from robench.data import load_digits_source

    loaded = _gray_model(gray_resnet)
    assert loaded.input.channels == 1 and loaded.mean == (0.5,) and loaded.num_classes == 10
    source = load_digits_source("test", limit=100)
    batch = next(source.batches(loaded.input, 100))
    assert batch.images.shape == (100, 1, 32, 32)
    raw = source.images.float() / 16  # by hand: the 8x8 digits, resized as robench resizes
    x = F.interpolate(raw, size=(32, 32), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    hand = _predict(loaded.module.model, x)
    with torch.no_grad():
        assert loaded.module(batch.images).argmax(1).tolist() == hand
    assert sum(p == y for p, y in zip(hand, batch.labels.tolist(), strict=True)) >= 90


def _digit_pngs(root: Path, mode: str, n: int = 60) -> list[tuple[Path, int]]:
    """n digits as 32x32 PNGs in class folders: gray (L) or tinted RGB, whose luminance is not the gray."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    files = []
    for i in range(n):
        gray = np.kron(digits.images[i] * 255 / 16, np.ones((4, 4))).round().astype(np.uint8)
        pixels = gray if mode == "L" else np.stack([gray, gray // 2, 255 - gray], -1).astype(np.uint8)
        folder = root / str(digits.target[i])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, mode).save(folder / f"{i:03d}.png")
        files.append((folder / f"{i:03d}.png", int(digits.target[i])))
    return files


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_one_channel_model_on_a_png_folder(gray_resnet: Path, tmp_path: Path, mode: str) -> None:
    """Gray PNGs as they are, RGB PNGs as their luminance (said once): the predictions of a hand loop."""
    import numpy as np
    from PIL import Image

    files = _digit_pngs(tmp_path / "pngs", mode)
    out = tmp_path / "s.csv"
    result = CliRunner().invoke(main, [
        "eval", "-m", f"test_resnet@{gray_resnet}", "--input-size", "1,32,32", "--crop-pct", "1", "--data",
        str(tmp_path / "pngs"), "--attack", "fgsm", "--eps", "8", "-q", "--no-health", "--per-sample", str(out)])
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count("converted to luminance") == (1 if mode == "RGB" else 0)
    import pandas as pd

    clean = pd.read_csv(out).query("attack == 'clean'").set_index("id")
    model = _gray_model(gray_resnet).module.model
    for path, label in files:
        pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255
        row = clean.loc[str(path.relative_to(tmp_path / "pngs"))]
        assert (row.pred, row.label) == (_predict(model, torch.from_numpy(pixels)[None, None])[0], label)


def test_three_channel_model_gets_gray_replicated(default_checkpoint: Path, gray_resnet: Path) -> None:
    """The 3-channel zoo model on gray digits = its 1-channel twin: the gray replicated, nothing else."""
    from robench.data import load_digits_source

    rgb, gray = load_model(parse_spec(str(default_checkpoint)), 10), _gray_model(gray_resnet)
    source = load_digits_source("test", limit=200)
    with torch.no_grad():
        a = torch.cat([rgb.module(b.images).argmax(1) for b in source.batches(rgb.input, 100)])
        b = torch.cat([gray.module(b.images).argmax(1) for b in source.batches(gray.input, 100)])
    assert (a != b).sum() <= 2  # the same model up to float sums in another order


def test_fashion_mnist_to_a_one_channel_model(gray_resnet: Path) -> None:
    from robench.data import FASHION_MNIST_DIR, load_fashion_mnist_source

    if not FASHION_MNIST_DIR.is_dir():
        pytest.skip("Debian package dataset-fashion-mnist not installed")
    loaded = _gray_model(gray_resnet, 28)
    source = load_fashion_mnist_source(limit=50)
    batch = next(source.batches(loaded.input, 50))
    x = source.images[:50].float() / 255
    with torch.no_grad():
        assert loaded.module(batch.images).argmax(1).tolist() == _predict(loaded.module.model, x)


def test_mnist_to_a_one_channel_model(gray_resnet: Path) -> None:
    """Real MNIST digits (28 px, resized to 32) on the 1-channel model: robench's batches = a hand loop."""
    import torch.nn.functional as F

    from robench.data import open_source

    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist-test-1k"
    if not root.is_dir():
        pytest.skip(f"{root} not present")
    loaded = _gray_model(gray_resnet)
    source = open_source(f"mnist:{root}", limit=100)
    batch = next(source.batches(loaded.input, 100))
    raw = source.images.float() / 255
    x = F.interpolate(raw, size=(32, 32), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    with torch.no_grad():
        assert loaded.module(batch.images).argmax(1).tolist() == _predict(loaded.module.model, x)


def test_where_each_input_config_comes_from(tmp_path: Path, default_checkpoint: Path, resnet: nn.Module) -> None:
    """Plain weights silently took timm's pretrained_cfg (160 px, crop 0.95 for a model trained at 32 px): now said."""
    torch.save(resnet.state_dict(), tmp_path / "w.pth")
    plain = load_model(parse_spec(f"a=test_resnet@{tmp_path / 'w.pth'}"), 10)
    assert (plain.input_from, plain.input.size) == ("timm_pretrained_cfg", (160, 160))
    assert plain.notes == [
        "model 'a': its weights carry no input config, so robench uses timm's pretrained_cfg for test_resnet: "
        "3x160x160 px, crop 0.95, bilinear, mean 0.5,0.5,0.5, std 0.5,0.5,0.5; if it was trained otherwise, set "
        "input_size/crop_pct/mean/std (or SPEC?input-size=C,H,W&...)"]  # fields: the CLI names its options
    told = load_model(parse_spec(f"a=test_resnet@{tmp_path / 'w.pth'}?input-size=3,32,32&crop-pct=1"), 10)
    assert told.notes == [] and told.describe()["input_overrides"] == {"input_size": [3, 32, 32], "crop_pct": 1.0}
    zoo = load_model(parse_spec(str(default_checkpoint)), 10)
    assert (zoo.input_from, zoo.notes, zoo.describe()["input_overrides"]) == ("checkpoint", [], {})


# ---------------------------------------------------------------- what torch accepts (issue 26)


def test_pre_041_batchnorm_state_dicts_load_as_torch_loads_them(tmp_path: Path, resnet: nn.Module) -> None:
    """akamaster's CIFAR-10 ResNets predate num_batches_tracked: torch's strict load accepts them, so robench does."""
    from safetensors.torch import save_file

    state = {k: v for k, v in resnet.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert len(state) < len(resnet.state_dict())
    fresh = timm.create_model("test_resnet", num_classes=10)
    fresh.load_state_dict(state, strict=True)  # torch's own judgement
    torch.save(state, tmp_path / "old.pth")
    save_file(state, str(tmp_path / "old.safetensors"))
    x = torch.rand(2, 3, 32, 32)
    resnet.eval()
    for name in ("old.pth", "old.safetensors"):
        loaded = load_model(parse_spec(f"test_resnet@{tmp_path / name}"), num_classes=10)
        mean = torch.tensor(loaded.mean).view(1, 3, 1, 1)
        std = torch.tensor(loaded.std).view(1, 3, 1, 1)
        assert torch.allclose(loaded.module(x), resnet((x - mean) / std)), name
        res = CliRunner().invoke(main, ["eval", "-m", f"test_resnet@{tmp_path / name}", "--attack", "fgsm",
                                        "--eps", "8", "-q", "--limit", "4"])
        assert res.exit_code == 0, (name, res.stderr)


def test_missing_buffers_alone_name_the_likely_cause(tmp_path: Path, resnet: nn.Module) -> None:
    buffers = {name for name, _ in resnet.named_buffers()}
    torch.save({k: v for k, v in resnet.state_dict().items() if k not in buffers}, tmp_path / "params.pth")
    res = CliRunner().invoke(main, ["eval", "-m", f"test_resnet@{tmp_path / 'params.pth'}", "--attack", "fgsm",
                                    "--eps", "8", "-q", "--limit", "4"])
    line = one_error_line(res, 2, "does not fit test_resnet: ", "missing keys (", "running_mean",
                          "only buffers are missing", "model.state_dict()")
    assert "is it the right architecture?" not in line


def test_a_results_file_given_as_a_model_says_what_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    baseline = "examples/ci/baseline.json"
    for args in (["eval", baseline], ["eval", "-m", f"x=test_resnet@{baseline}"]):
        res = CliRunner().invoke(main, [*args, "--attack", "fgsm", "--eps", "8", "-q", "--limit", "4"])
        line = one_error_line(res, 2, f"{baseline} is a robench results file", f"robench report {baseline}",
                              "robench gate")
        assert "give it as NAME@" not in line
    monkeypatch.chdir("examples/ci")  # without a slash the grammar reads a timm name: the hint still says what it is
    res = CliRunner().invoke(main, ["eval", "baseline.json", "--attack", "fgsm", "--eps", "8", "-q", "--limit", "4"])
    one_error_line(res, 2, "baseline.json is a robench results file", "robench report baseline.json")


def test_an_unknown_zoo_name_suggests_the_closest() -> None:
    with pytest.raises(RobenchError, match=r"unknown zoo model 'effnet-bse'; did you mean effnet-base, "):
        parse_spec("zoo:effnet-bse")
    res = CliRunner().invoke(main, ["eval", "-m", "zoo:effnet-bse", "--attack", "fgsm", "--eps", "8", "-q"])
    one_error_line(res, 2, "did you mean effnet-base, ", "robench zoo list")

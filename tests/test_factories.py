"""Factory specs (FILE.py:CALLABLE, package.module:CALLABLE): any nn.Module through every command."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from results_docs import one_error_line
from safetensors.torch import load_file

from robench import engine
from robench.attacks import REGISTRY, Labels
from robench.attacks.suite import parse_suite
from robench.cli.main import main
from robench.data import InputConfig, load_digits_source
from robench.errors import RobenchError
from robench.models import Normalized, factories, logits_of, parse_spec

NETS = '''
import torch
from torch import nn


class Net(nn.Sequential):
    """A small CNN for 1-channel 8x8 digits."""

    def __init__(self, num_classes=10):
        torch.manual_seed(0)
        super().__init__(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(256, num_classes))


class Pair(nn.Module):
    """Returns (logits, features), as inception_v3 with aux_logits does."""

    def __init__(self):
        super().__init__()
        self.net = Net()

    def forward(self, x):
        return self.net(x), x.mean()


class Named(Pair):
    def forward(self, x):
        return {"logits": self.net(x), "aux": x}


class Output:
    def __init__(self, logits):
        self.logits = logits


class Attr(Pair):
    def forward(self, x):
        return Output(self.net(x))


class Text(Pair):
    def forward(self, x):
        return "logits"


class Keys(Pair):
    def forward(self, x):
        return {"scores": self.net(x)}


class Configured(Net):
    """Carries timm's pretrained_cfg: robench treats it as a timm model."""

    pretrained_cfg = {"input_size": (1, 16, 16), "mean": (0.5,), "std": (0.25,), "interpolation": "bilinear",
                      "crop_pct": 1.0}


def fixed():
    """No num_classes: it decides its own."""
    return Net(10)


def raises():
    raise ValueError("no weights for you")


def not_a_module():
    return [1, 2]


def flat(num_classes=10):
    """Takes exactly 1x8x8 images."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))


def pixels(num_classes=10):
    return nn.Identity()


def inception(num_classes=10):
    """timm's inception_v3 with aux_logits returns (logits, aux) even in eval mode."""
    import timm

    return timm.create_model("inception_v3", aux_logits=True, num_classes=num_classes)


def four_channels(num_classes=10):
    return nn.Sequential(nn.Conv2d(4, 4, 3), nn.Flatten(), nn.LazyLinear(num_classes))
'''


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def nets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The factories above in a .py file, and Net trained 3 epochs on digits (robench train) beside it."""
    root = tmp_path_factory.mktemp("nets")
    (root / "nets.py").write_text(NETS)
    result = invoke("train", "--arch", f"{root / 'nets.py'}:Net", "--train-attack", "none", "--epochs", "3",
                    "--image-size", "8", "--limit", "800", "--out", root / "net.safetensors", "-q")
    assert result.exit_code == 0, result.stderr
    return root


def _import(path: Path) -> object:
    spec = importlib.util.spec_from_file_location("nets_by_hand", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _by_hand(nets: Path) -> Normalized:
    """Net with the trained weights, built without robench's loader: identity mean/std, as trained."""
    net = _import(nets / "nets.py").Net()
    net.load_state_dict(load_file(str(nets / "net.safetensors")))
    return Normalized(net.eval(), (0.0,), (1.0,)).eval()


def test_is_factory() -> None:
    assert factories.is_factory("nets.py:Net") and factories.is_factory("a/b/nets.py:make_net")
    assert factories.is_factory("lab.models:LeNet") and factories.is_factory("lab:LeNet")
    for text in ("resnet18", "hf-hub:timm/resnet18.a1_in1k", "zoo:resnet-base", "nets.py:", "nets.py:1x",
                 "run/m.safetensors", "lab.models:Le-Net"):
        assert not factories.is_factory(text), text


@pytest.mark.parametrize(("text", "label", "name", "checkpoint"), [
    ("nets.py:Net", "Net", "nets.py:Net", None),
    ("mine=dir/nets.py:Net@w.safetensors", "mine", "dir/nets.py:Net", Path("w.safetensors")),
    ("lab.models:LeNet@runs/a@b.pth", "LeNet", "lab.models:LeNet", Path("runs/a@b.pth")),
    ("x=nets.py:Net?mean=0.5&std=0.25", "x", "nets.py:Net", None),
])
def test_parse_factory_specs(text: str, label: str, name: str, checkpoint: Path | None) -> None:
    spec = parse_spec(text)
    assert (spec.label, spec.name, spec.checkpoint, spec.is_factory) == (label, name, checkpoint, True)


def test_trained_factory_checkpoint_records_the_factory(nets: Path) -> None:
    from robench.models.checkpoint import read_metadata

    meta = read_metadata(nets / "net.safetensors")
    assert meta["arch"] == f"{nets / 'nets.py'}:Net"
    assert (meta["input_size"], meta["mean"], meta["std"]) == ([1, 8, 8], [0.0], [1.0])
    assert meta["val_accuracy"] > 0.5  # 3 epochs on 800 digits: far above chance (0.1)


def test_cli_agrees_with_the_library_and_torchattacks(nets: Path, tmp_path: Path) -> None:
    """Per-sample predictions of `robench eval` = engine.evaluate on the module = torchattacks' FGSM and BIM."""
    torchattacks = pytest.importorskip("torchattacks")
    spec = f"{nets / 'nets.py'}:Net@{nets / 'net.safetensors'}"
    result = invoke("eval", "-m", spec, "--attack", "fgsm", "--attack", "bim", "--eps", "4,16", "--limit", "200",
                    "-q", "--per-sample", tmp_path / "s.csv", "-o", tmp_path / "r.json")
    assert result.exit_code == 0, result.stderr
    assert "pretrained_cfg" not in result.stderr  # the checkpoint says mean, std and size
    cli = pd.read_csv(tmp_path / "s.csv")
    model = _by_hand(nets)
    source = load_digits_source("test", limit=200, seed=0)
    suite = parse_suite("attacks: [{name: fgsm}, {name: bim}]\neps: [4, 16]\n")
    lib = engine.evaluate(model, source.batches(InputConfig(1, (8, 8)), 100), source.ids, suite)
    for s, (attack, eps) in enumerate(lib.settings):
        rows = cli[(cli.attack == attack) & (cli.eps == eps)]
        assert rows.pred.tolist() == lib.pred[s].tolist(), (attack, eps)
    attacks = {"fgsm": lambda e: torchattacks.FGSM(model, eps=e / 255),
               "bim": lambda e: torchattacks.BIM(model, eps=e / 255, alpha=1 / 255, steps=0)}
    for batch in source.batches(InputConfig(1, (8, 8)), 100):
        with torch.no_grad():
            labels = Labels.from_logits(model(batch.images), batch.labels)
        for name, make in attacks.items():
            for eps in (4.0, 16.0):
                ours = dict(REGISTRY[name].run(model, batch.images, labels, [eps], REGISTRY[name].config(),
                                               torch.Generator().manual_seed(0)))[eps]
                ref = make(eps)(batch.images, batch.labels)
                assert torch.equal(ours, ref), (name, eps)
                with torch.no_grad():
                    pred = model(ref).argmax(1)
                rows = cli[(cli.attack == name) & (cli.eps == eps)].iloc[batch.rows.numpy()]
                assert rows.pred.tolist() == pred.tolist(), (name, eps)
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["models"][0]["arch"] == f"{nets / 'nets.py'}:Net"
    assert (doc["models"][0]["input_size"], doc["models"][0]["mean"]) == ([1, 8, 8], [0.0])


def test_module_factory_on_sys_path(nets: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``package.module:CALLABLE`` gives the same outcomes as the file form (same code, same weights)."""
    monkeypatch.syspath_prepend(str(nets))
    monkeypatch.delitem(sys.modules, "nets", raising=False)
    outs = {}
    for name, factory in (("file", f"{nets / 'nets.py'}:Net"), ("module", "nets:Net")):
        result = invoke("eval", "-m", f"{factory}@{nets / 'net.safetensors'}", "--attack", "fgsm", "--eps", "8",
                        "--limit", "60", "-q", "--per-sample", tmp_path / f"{name}.csv")
        assert result.exit_code == 0, result.stderr
        outs[name] = pd.read_csv(tmp_path / f"{name}.csv")
    assert outs["file"].pred.tolist() == outs["module"].pred.tolist()


@pytest.mark.parametrize("callable_name", ["Pair", "Named", "Attr"])
def test_wrapped_logits_are_taken_and_said_once(nets: Path, tmp_path: Path, callable_name: str) -> None:
    """A tuple's first element, a dict's 'logits', an object's .logits: the plain model's predictions."""
    runs = {}
    for name in ("Net", callable_name):
        result = invoke("eval", "-m", f"{nets / 'nets.py'}:{name}", "--attack", "fgsm", "--eps", "8", "--limit",
                        "40", "-q", "--no-health", "--per-sample", tmp_path / f"{name}.csv")
        assert result.exit_code == 0, result.stderr
        runs[name] = (pd.read_csv(tmp_path / f"{name}.csv"), result.stderr)
    assert runs[callable_name][0].pred.tolist() == runs["Net"][0].pred.tolist()
    where = {"Pair": "output[0]", "Named": "output['logits']", "Attr": "output.logits"}[callable_name]
    assert runs[callable_name][1].count("robench takes its logits from") == 1 and where in runs[callable_name][1]
    assert "robench takes its logits" not in runs["Net"][1]


@pytest.mark.slow
def test_inception_v3_with_aux_logits(nets: Path, tmp_path: Path) -> None:
    """The issue's case: robench exited 3 with "'tuple' object has no attribute 'clone'"."""
    result = invoke("eval", "-m", f"{nets / 'nets.py'}:inception", "--attack", "fgsm", "--eps", "8", "--limit", "2",
                    "-q", "--no-health", "-o", tmp_path / "r.json")
    assert result.exit_code == 0, result.stderr
    assert "returns a tuple; robench takes its logits from output[0]" in result.stderr
    model = json.loads((tmp_path / "r.json").read_text())["models"][0]
    assert (model["input_size"], model["mean"]) == ([3, 299, 299], pytest.approx([0.5, 0.5, 0.5]))  # its own cfg
    assert model["weights"] == "factory" and "random weights" not in result.stderr  # its code may load weights


def test_logits_of() -> None:
    x = torch.ones(2, 3)
    assert logits_of(x) is x and logits_of((x, None)) is x and logits_of([x]) is x
    assert logits_of({"logits": x}) is x
    with pytest.raises(RobenchError, match="returns a str; robench needs logits"):
        logits_of("no")
    with pytest.raises(RobenchError, match="returns a dict with keys scores"):
        logits_of({"scores": x})


def test_pretrained_cfg_is_honoured(nets: Path, tmp_path: Path) -> None:
    """input_size, mean and std of the module's pretrained_cfg: in the results and in the numbers."""
    net = _by_hand(nets).model
    torch.save(net.state_dict(), tmp_path / "w.pth")  # plain weights: the module's pretrained_cfg decides
    result = invoke("eval", "-m", f"{nets / 'nets.py'}:Configured@{tmp_path / 'w.pth'}", "--attack", "fgsm",
                    "--eps", "8", "--limit", "50", "-q", "--no-health", "--per-sample", tmp_path / "s.csv",
                    "-o", tmp_path / "r.json")
    assert result.exit_code == 0, result.stderr
    assert "pretrained_cfg" not in result.stderr
    model = json.loads((tmp_path / "r.json").read_text())["models"][0]
    assert (model["input_size"], model["mean"], model["std"]) == ([1, 16, 16], [0.5], [0.25])
    batch = next(load_digits_source("test", limit=50, seed=0).batches(InputConfig(1, (16, 16)), 50))
    with torch.no_grad():
        expected = net((batch.images - 0.5) / 0.25).argmax(1)
        identity = net(batch.images).argmax(1)
    clean = pd.read_csv(tmp_path / "s.csv").query("attack == 'clean'")
    assert clean.pred.tolist() == expected.tolist()
    assert (expected != identity).any()  # the normalization changes predictions: the test can fail


def test_factory_without_num_classes_and_a_plain_state_dict(nets: Path, tmp_path: Path) -> None:
    torch.save(_by_hand(nets).model.state_dict(), tmp_path / "w.pth")
    result = invoke("eval", "-m", f"{nets / 'nets.py'}:fixed@{tmp_path / 'w.pth'}", "--attack", "fgsm", "--eps",
                    "8", "--limit", "30", "-q", "--no-health", "-o", tmp_path / "r.json")
    assert result.exit_code == 0, result.stderr
    assert "pretrained_cfg: robench feeds it [0, 1] pixels unnormalized" in result.stderr  # a plain file says nothing
    assert json.loads((tmp_path / "r.json").read_text())["models"][0]["weights"] == "checkpoint"


@pytest.mark.parametrize(("spec", "needles"), [
    ("{d}/nets.py:Nte", ("has no 'Nte'", "did you mean Net?")),
    ("{d}/nets.py:zzz", ("has no 'zzz'; its callables: Net, Pair, Named, Output, Attr, Text, Keys, Configured, ...",)),
    ("{d}/missing.py:Net", ("file", "missing.py not found")),
    ("no_such_package.models:Net", ("cannot import module no_such_package.models", "ModuleNotFoundError")),
    ("{d}/nets.py:raises", ("raises() raised ValueError: no weights for you",)),
    ("{d}/nets.py:not_a_module", ("returned a list, not a torch.nn.Module",)),
    ("{d}/nets.py:pixels", ("returns torch.float32 logits of shape [2, 1, 8, 8]",)),
    ("{d}/nets.py:Text", ("returns a str; robench needs logits",)),
    ("{d}/nets.py:Keys", ("returns a dict with keys scores",)),
    ("{d}/nets.py:four_channels", ("takes 4 input channels",)),
    ("{d}/nets.py:Net?input-size=3,8,8", ("takes 1 channel(s)", "give input-size 1,8,8")),
    ("{d}/nets.py:flat?input-size=1,4,4", ("fails on a batch of shape [2, 1, 4, 4]", "RuntimeError")),
    ("{d}/nets.py:Net?colour=1", ("unknown setting 'colour'",)),
    ("{d}/nets.py:Net?std=0", ("std must be > 0",)),
    ("{d}/nets.py:Net?std=0.5&std=0.4", ("'std' is set twice",)),
    ("{d}/nets.py:", ("a factory is FILE.py:CALLABLE",)),
    (":Net", ("a factory is FILE.py:CALLABLE",)),
    ("{d}/nets.py:Net@{d}/none.safetensors", ("checkpoint not found",)),
    ("{d}/nets.py:Net@{d}/nets.py", ("cannot load checkpoint",)),
])
def test_bad_factories_exit_2_with_one_line_and_no_file(nets: Path, tmp_path: Path, spec: str,
                                                        needles: tuple[str, ...]) -> None:
    out = tmp_path / "r.json"
    result = invoke("eval", "-m", spec.format(d=nets), "--attack", "fgsm", "--eps", "8", "--limit", "10", "-o", out)
    one_error_line(result, 2, *needles)
    assert not out.exists()


def test_import_failures_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("import no_such_dependency\n")
    (tmp_path / "exits.py").write_text("raise SystemExit(4)\n")
    one_error_line(invoke("eval", "-m", f"{tmp_path / 'broken.py'}:Net", "--limit", "5"), 2,
                   "importing", "ModuleNotFoundError: No module named 'no_such_dependency'")
    one_error_line(invoke("eval", "-m", f"{tmp_path / 'exits.py'}:Net", "--limit", "5"), 2,
                   "importing", "SystemExit: 4")


def test_a_checkpoint_never_makes_robench_import_code(nets: Path, tmp_path: Path) -> None:
    """The checkpoint names its factory, but only a spec may import it: the file's code does not run."""
    marker = tmp_path / "ran"
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n" + NETS)
    from robench.models.checkpoint import read_metadata, save_checkpoint

    meta = {**read_metadata(nets / "net.safetensors"), "arch": f"{tmp_path / 'evil.py'}:Net"}
    save_checkpoint(tmp_path / "c.safetensors", _by_hand(nets).model, meta)
    line = one_error_line(invoke("eval", "-m", tmp_path / "c.safetensors", "--limit", "5"), 2, "never imports")
    assert f"as {tmp_path / 'evil.py'}:Net@" in line and not marker.exists()


def test_every_command_takes_factories(nets: Path, tmp_path: Path) -> None:
    """transfer-matrix (factories as source and target) and leak-check; train is the fixture."""
    spec = f"{nets / 'nets.py'}:Net@{nets / 'net.safetensors'}"
    other = f"pair={nets / 'nets.py'}:Pair"
    result = invoke("transfer-matrix", "-m", spec, "-m", other, "--attack", "fgsm", "--eps", "8", "--limit", "30",
                    "-q", "--no-health", "-o", tmp_path / "t.json")
    assert result.exit_code == 0, result.stderr
    rows = json.loads((tmp_path / "t.json").read_text())["rows"]
    assert {(r["source"], r["target"]) for r in rows} >= {("Net", "pair"), ("pair", "Net")}
    result = invoke("leak-check", "-m", spec, "--limit", "30", "-q", "-o", tmp_path / "l.json")
    assert result.exit_code in (0, 1), result.stderr
    assert json.loads((tmp_path / "l.json").read_text())["models"][0]["arch"] == f"{nets / 'nets.py'}:Net"
    result = invoke("eval", "-m", spec, "--attack", "fgsm", "--eps", "8", "--limit", "30", "-q", "--no-health",
                    "-o", tmp_path / "e.json")
    assert result.exit_code == 0, result.stderr
    (tmp_path / "gates.yaml").write_text("rules:\n  - {name: clean, model: Net, attack: clean, min: 0.99}\n")
    result = invoke("gate", tmp_path / "e.json", "--rules", tmp_path / "gates.yaml", "-q")
    assert result.exit_code == 1 and "Net" in result.stdout + result.stderr  # about 80% clean: the gate fails


GREY = '''
import torch
from torch import nn

GREYS = {"1": 40, "2": 120, "10": 200}


class Lookup(nn.Module):
    """Names an image's class by its grey level, numbered as torchvision numbers the folders (1, 10, 2)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("greys", torch.tensor([GREYS[n] / 255 for n in sorted(GREYS)]))

    def forward(self, x):
        return -1000.0 * (x.mean((1, 2, 3))[:, None] - self.greys[None]) ** 2


def ten(num_classes=10):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(10))
'''


@pytest.fixture
def grey(tmp_path: Path, class_folder) -> tuple[Path, Path]:
    (tmp_path / "grey.py").write_text(GREY)
    return tmp_path / "grey.py", class_folder("1", "2", "10")


def test_the_issues_class_order_case_end_to_end(grey: tuple[Path, Path], tmp_path: Path) -> None:
    """A model numbering classes as torchvision does: 1 in 3 right in natural order (warned), all in lexical."""
    factory, folder = grey
    shares = {}
    for order in ("natural", "lexical"):
        result = invoke("eval", "-m", f"{factory}:Lookup", "--data", folder, "--class-order", order, "--attack",
                        "fgsm", "--eps", "2", "-q", "--no-health", "-o", tmp_path / f"{order}.json")
        assert result.exit_code == 0, result.stderr
        doc = json.loads((tmp_path / f"{order}.json").read_text())
        shares[order] = next(r["top1"] for r in doc["rows"] if r["attack"] == "clean")
        assert ("sort differently" in result.stderr) == (order == "natural")
        assert doc["dataset"]["classes"] == (["1", "2", "10"] if order == "natural" else ["1", "10", "2"])
    assert shares == {"natural": pytest.approx(1 / 3), "lexical": 1.0}


def test_a_run_that_fails_to_open_says_only_why(grey: tuple[Path, Path], tmp_path: Path) -> None:
    """The class-order warning waits until everything has opened: exit 2 is one line, with the factory's fix."""
    factory, folder = grey
    result = invoke("eval", "-m", f"{factory}:ten", "--data", folder, "-o", tmp_path / "r.json")
    one_error_line(result, 2, "model 'ten' has 10 classes but", "let the factory take num_classes=")


def test_train_says_rgb_trains_a_one_channel_model_as_luminance(nets: Path, tmp_path: Path) -> None:
    from PIL import Image

    for c in range(10):
        (tmp_path / "rgb" / str(c)).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (25 * c, 10 * i, 200)).save(tmp_path / "rgb" / str(c) / f"{i}.png")
    result = invoke("train", "--arch", f"{nets / 'nets.py'}:Net", "--data", tmp_path / "rgb", "--train-attack", "none",
                    "--epochs", "1", "--batch-size", "4", "--image-size", "8", "-q",
                    "--out", tmp_path / "m.safetensors")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count("converted to luminance") == 1

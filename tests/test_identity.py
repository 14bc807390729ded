"""A model's identity (its code, beside its weights): resume states and the example cache key on it; results too."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from robench.attacks.suite import parse_suite
from robench.cli.main import main
from robench.errors import RobenchError
from robench.models import load_model, parse_spec
from robench.models.identity import model_identity
from robench.results.read import load_results
from robench.run.runspec import RunSpec
from robench.run.transfer import TransferConfig, run_transfer

NETS = '''
import torch
from torch import nn


class Small(nn.Sequential):
    def __init__(self, num_classes=10):
        torch.manual_seed(0)
        super().__init__(nn.Flatten(), nn.Linear(64, num_classes))


class Neg(Small):
    """Small's parameters, the opposite logits: the same state dict, another function."""

    def forward(self, x):
        return -super().forward(x)


def small(num_classes=10):
    return Small(num_classes)


def neg(num_classes=10):
    return Neg(num_classes)
'''
EVAL = ["--limit", "10", "--attack", "fgsm", "--eps", "8", "-q", "--no-health"]
DIGITS = (1, 8, 8)  # the default data's (C, H, W), a factory model's input
ONE_STEP = parse_suite("eps: [8]\nattacks:\n  - name: fgsm\n")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def nets(tmp_path: Path) -> Path:
    (tmp_path / "nets.py").write_text(NETS)
    return tmp_path / "nets.py"


def _eval(*args: object):
    return CliRunner().invoke(main, ["eval", *EVAL, *(str(a) for a in args)])


def test_two_factories_with_equal_weights_are_two_models(nets: Path) -> None:
    small, neg = (load_model(parse_spec(f"m={nets}:{name}"), num_classes=10, native=DIGITS)
                  for name in ("small", "neg"))
    assert small.weights_sha256 == neg.weights_sha256
    assert small.function() != neg.function()
    assert small.identity == {"arch": f"{nets}:small", "source_sha256": _sha(nets), "class": "Small",
                              "class_source_sha256": _sha(nets)}
    assert neg.identity == {**small.identity, "arch": f"{nets}:neg", "class": "Neg"}


def test_a_factory_of_equal_weights_and_another_forward_does_not_resume_the_first(tmp_path: Path, nets: Path) -> None:
    state, out = tmp_path / "state", tmp_path / "neg.json"
    assert _eval("-m", f"m={nets}:small", "--resume", state).exit_code == 0
    res = _eval("-m", f"m={nets}:neg", "--resume", state, "--out", out)
    assert res.exit_code == 2, res.output
    assert "holds the state of a different run" in res.stderr and "Traceback" not in res.output
    assert not out.exists()


def test_a_changed_factory_file_does_not_resume_the_first(tmp_path: Path, nets: Path) -> None:
    state = tmp_path / "state"
    assert _eval("-m", f"m={nets}:small", "--resume", state).exit_code == 0
    again = _eval("-m", f"m={nets}:small", "--resume", state)
    assert again.exit_code == 0, again.output  # unchanged, it resumes
    before = load_model(parse_spec(f"{nets}:small"), num_classes=10, native=DIGITS).identity
    nets.write_text(NETS.replace("return -super()", "return 2 * super()"))
    after = load_model(parse_spec(f"{nets}:small"), num_classes=10, native=DIGITS).identity
    assert after == {**before, "source_sha256": _sha(nets), "class_source_sha256": _sha(nets)} != before
    res = _eval("-m", f"m={nets}:small", "--resume", state)
    assert res.exit_code == 2 and "holds the state of a different run" in res.stderr


def test_the_identity_is_recorded_in_the_results(tmp_path: Path, nets: Path) -> None:
    out = tmp_path / "r.json"
    assert _eval("-m", f"m={nets}:small", "-m", "zoo:resnet-base", "--out", out).exit_code == 0
    models = json.loads(out.read_text())["models"]
    assert [m["identity"] for m in models] == [
        {"arch": f"{nets}:small", "source_sha256": _sha(nets), "class": "Small", "class_source_sha256": _sha(nets)},
        {"arch": "test_resnet"}]
    load_results(out)  # the schema takes it


def test_an_identity_that_is_not_a_digest_is_refused(tmp_path: Path, nets: Path) -> None:
    out = tmp_path / "r.json"
    assert _eval("-m", f"m={nets}:small", "--out", out).exit_code == 0
    doc = json.loads(out.read_text())
    del doc["models"][0]["identity"]  # a file written before robench recorded it is read
    out.write_text(json.dumps(doc))
    load_results(out)
    doc["models"][0]["identity"] = {"arch": "x", "source_sha256": "not a digest"}
    out.write_text(json.dumps(doc))
    with pytest.raises(RobenchError, match="source_sha256"):
        load_results(out)


def test_the_example_cache_keys_on_the_model_s_code(tmp_path: Path, nets: Path) -> None:
    cache, run = tmp_path / "cache", RunSpec(suite=ONE_STEP, limit=10, batch_size=10)

    def crafted(name: str) -> int:
        return run_transfer(TransferConfig((f"m={nets}:{name}",), run=run, cache=cache)).outcomes.crafted

    assert (crafted("small"), crafted("small")) == (1, 0)  # the second run reads the first's examples
    assert crafted("neg") == 1  # equal weights, another forward: a miss, crafted anew


@pytest.mark.slow  # 11 s: two efficientnet_b0 built and probed
def test_two_timm_names_with_the_same_weights_are_two_models(tmp_path: Path) -> None:
    """efficientnet_b0 and tf_efficientnet_b0 take the same state dict and pad differently."""
    import timm

    weights = tmp_path / "w.pth"
    torch.save(timm.create_model("efficientnet_b0", num_classes=10).state_dict(), weights)
    ours, tf = (load_model(parse_spec(f"{name}@{weights}"), num_classes=10)
                for name in ("efficientnet_b0", "tf_efficientnet_b0"))
    assert ours.weights_sha256 == tf.weights_sha256
    assert (ours.identity, tf.identity) == ({"arch": "efficientnet_b0"}, {"arch": "tf_efficientnet_b0"})
    assert ours.function() != tf.function()


def test_a_module_factory_is_known_by_its_module_s_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "idnets_pkg").mkdir()
    (tmp_path / "idnets_pkg" / "__init__.py").write_text("")
    (tmp_path / "idnets_pkg" / "nets.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "idnets_pkg.nets", raising=False)
    model = torch.nn.Linear(1, 1)
    found = model_identity("idnets_pkg.nets:small", model)
    assert found["arch"] == "idnets_pkg.nets:small"
    assert found["source_sha256"] == _sha(tmp_path / "idnets_pkg" / "nets.py")
    assert found["class"] == "Linear" and found["class_source_sha256"] is not None  # torch's own file

"""The built-in zoo: shipped files match their recipes, specs resolve, and rebuilds are bit-identical."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from robench.checkpoint import read_metadata
from robench.cli.main import main
from robench.errors import RobenchError
from robench.models import load_model, parse_spec
from robench.zoo import DEFAULT, ZOO, ZOO_DIR, get
from robench.zoo_build import build


@pytest.mark.parametrize("name", sorted(ZOO))
def test_shipped_file_matches_recipe(name: str) -> None:
    entry = get(name)
    meta = read_metadata(entry.path)
    assert meta["arch"] == entry.config.arch and meta["epochs_done"] == entry.config.epochs
    assert meta["recipe"]["attack"] == entry.config.attack and meta["recipe"]["label"] == entry.config.label
    assert meta["val_accuracy"] > 0.9 and meta["dataset"] == "digits:train"
    assert sum(p.numel() for p in load_model(parse_spec(f"zoo:{name}"), 10).module.parameters()) < 1_000_000


def test_zoo_is_small_and_has_two_architectures() -> None:
    assert sum(p.stat().st_size for p in ZOO_DIR.glob("*.safetensors")) < 5 * 2**20
    assert len({e.config.arch for e in ZOO.values()}) >= 2
    attacks = {(e.config.attack, e.config.label) for e in ZOO.values()}
    assert {("none", "true"), ("step_ll", "true"), ("fgsm", "true"), ("fgsm", "predicted")} <= attacks
    assert set(DEFAULT) <= set(ZOO)


def test_zoo_specs() -> None:
    spec = parse_spec("mine=zoo:effnet-stepll")
    assert (spec.label, spec.name, spec.checkpoint) == ("mine", None, ZOO_DIR / "effnet-stepll.safetensors")
    assert parse_spec("zoo:resnet-base").label == "resnet-base"
    with pytest.raises(RobenchError, match="unknown zoo model 'nope'; known: effnet-base"):
        parse_spec("zoo:nope")


def test_zoo_list_cli() -> None:
    result = CliRunner().invoke(main, ["zoo", "list"])
    assert result.exit_code == 0
    for name in ZOO:
        assert f"zoo:{name}" in result.stdout
    assert "missing" not in result.stdout


def test_rebuild_is_bit_identical(tmp_path: Path) -> None:
    """`python -m robench.zoo_build` reproduces the shipped file byte for byte (same kind of CPU)."""
    (path,) = build(["effnet-base"], tmp_path)
    assert path.read_bytes() == get("effnet-base").path.read_bytes()

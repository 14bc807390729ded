"""Reading results files back: one reader for gates and baselines; a .json copy keeps its text, a .csv
becomes JSON; `robench baseline update` copies only what the reader accepts."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from results_docs import BASE, GRID, flip, invoke, make_doc, one_error_line, write

from robench.errors import RobenchError
from robench.provenance import SCHEMA_VERSION
from robench.report import write_results
from robench.results_file import load_results, per_sample, results_json, row_key, row_label


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    worse = make_doc({k: flip(v, 30) if k == ("effnet-stepll", "fgsm", 8.0) else v for k, v in GRID.items()})
    return {"base": write(tmp_path / "base.json", make_doc(GRID)), "worse": write(tmp_path / "worse.json", worse)}


# --- the reader ----------------------------------------------------------------------------------

def test_json_copy_keeps_the_files_text(tmp_path: Path) -> None:
    path = write(tmp_path / "r.json", json.dumps(make_doc(GRID), indent=4))
    doc, text = results_json(path)
    assert text == path.read_text() and doc == load_results(path) == json.loads(text)


def test_csv_becomes_json_without_per_sample_outcomes(tmp_path: Path) -> None:
    full = make_doc(GRID)
    write_results(tmp_path / "r.csv", {k: v for k, v in full.items() if k not in ("rows", "samples")},
                  pd.DataFrame(full["rows"]))
    doc, text = results_json(tmp_path / "r.csv")
    assert json.loads(text) == doc and doc["rows"] == full["rows"] and "samples" not in doc
    assert per_sample(doc, "top1") == {} and len(per_sample(full, "top1")) == len(GRID)
    with pytest.raises(RobenchError, match="alone.csv.meta.json is missing"):
        load_results(write(tmp_path / "alone.csv", "model,top1\n"))


def test_per_sample_outcomes_by_row_key() -> None:
    doc = make_doc({("m", "fgsm", 8.0): flip(BASE, 20)})
    bits = per_sample(doc, "top1")
    assert list(bits) == [row_key(doc["rows"][0])] == [("m", "fgsm", 8.0)]
    assert bits[("m", "fgsm", 8.0)].sum() == 130
    assert per_sample({**doc, "dataset": {}}, "top1") == {}  # no sample ids: nothing to pair


def test_row_labels() -> None:
    assert row_label({"model": "a", "attack": "fgsm", "eps": 8.0}) == "a fgsm eps 8"
    assert row_label({"model": "a", "attack": "clean", "eps": 0.0}) == "a clean"
    assert row_label({"source": "a", "target": "b", "attack": "pgd", "eps": 0.5}) == "a -> b pgd eps 0.5"


# --- robench baseline update ---------------------------------------------------------------------

def test_baseline_update_copies_a_valid_results_file(files, tmp_path: Path) -> None:
    target = tmp_path / "ci" / "baseline.json"
    target.parent.mkdir()
    r = invoke("baseline", "update", files["worse"], target)
    assert r.exit_code == 0, r.stderr
    assert target.read_bytes() == files["worse"].read_bytes()
    assert "12 rows (effnet-base, effnet-stepll, resnet-base), with per-sample outcomes" in r.stdout
    assert invoke("gate", files["worse"], "--baseline", target).exit_code == 0  # the new baseline gates clean


def test_baseline_update_refuses_bad_results(files, tmp_path: Path) -> None:
    old = write(tmp_path / "old.json", {**make_doc(GRID), "schema_version": 0})
    one_error_line(invoke("baseline", "update", old, files["base"]), 2, "schema_version 0")
    one_error_line(invoke("baseline", "update", files["base"], tmp_path / "b.yaml"), 2, "BASELINE", ".json")
    assert json.loads(files["base"].read_text())["schema_version"] == SCHEMA_VERSION
    assert not (tmp_path / "b.yaml").exists()

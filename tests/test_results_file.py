"""Reading results files back: one reader for gates and baselines; a .json copy keeps its text, a .csv
becomes JSON; `robench baseline update` copies only what the reader accepts."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from results_docs import BASE, GRID, flip, invoke, make_doc, one_error_line, write

from robench.errors import RobenchError
from robench.results.provenance import SCHEMA_VERSION
from robench.results.read import load_results, per_sample, results_json, row_key, row_label
from robench.results.write import write_results


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


# --- the schema: NaN where null is allowed, strict JSON copies, the published JSON Schema --------

def test_nan_reads_as_null_where_null_is_allowed_and_copies_hold_no_nan(tmp_path: Path) -> None:
    doc = make_doc(GRID)
    doc["rows"][1]["success_rate"] = float("nan")
    doc["rows"][1]["note"] = float("nan")  # a field the schema leaves open
    path = write(tmp_path / "nan.json", json.dumps(doc))  # Python's json writes NaN literals
    before = path.read_bytes()
    read, text = results_json(path)
    assert read["rows"][1]["success_rate"] is None and read["rows"][1]["note"] is None
    assert "NaN" not in text and json.loads(text) == read
    r = invoke("baseline", "update", path, tmp_path / "b.json")
    assert r.exit_code == 0, r.stderr
    assert "NaN" not in (tmp_path / "b.json").read_text() and path.read_bytes() == before


def test_baseline_update_refuses_nan_and_out_of_range(tmp_path: Path) -> None:
    for field, value, needle in (("top1", float("nan"), "got NaN"), ("top5", 1.5, "<= 1"), ("n", -3, ">= 0")):
        doc = make_doc(GRID)
        doc["rows"][2][field] = value
        path = write(tmp_path / "bad.json", json.dumps(doc))
        r = invoke("baseline", "update", path, tmp_path / "b.json")
        one_error_line(r, 2, "bad.json", f"rows[2].{field}", needle)
        assert not (tmp_path / "b.json").exists()


def test_csv_rows_are_validated_and_numeric_labels_stay_strings(tmp_path: Path) -> None:
    full = make_doc(GRID)
    meta = {k: v for k, v in full.items() if k not in ("rows", "samples")}
    rows = pd.DataFrame(full["rows"]).assign(model="18")
    write_results(tmp_path / "r.csv", meta, rows)
    assert {r["model"] for r in load_results(tmp_path / "r.csv")["rows"]} == {"18"}
    write_results(tmp_path / "r.csv", meta, rows.assign(top1=2.0))
    with pytest.raises(RobenchError, match=r"r\.csv \(with r\.csv\.meta\.json\): field rows\[0\]\.top1: expected a "
                                           r"number <= 1, got 2\.0 \(and 11 more\)"):
        load_results(tmp_path / "r.csv")


def test_committed_json_schema_is_the_generated_one() -> None:
    from robench.results.schema import json_schema

    committed = Path(__file__).resolve().parents[1] / "schemas" / "results.schema.json"
    assert json.loads(committed.read_text()) == json_schema(), "regenerate: robench schema results -o " + str(committed)
    r = invoke("schema", "results")
    assert r.exit_code == 0 and json.loads(r.stdout) == json_schema()


def test_other_tools_validating_with_the_published_schema_refuse_what_robench_refuses() -> None:
    """The schema is for other tools: its ranges must be JSON Schema keywords (minimum/maximum), not pydantic's
    (ge/le), which validators ignore: a count of -5 validated."""
    import jsonschema

    from robench.results.schema import json_schema

    schema = json_schema()

    def keys(node) -> set[str]:
        if isinstance(node, dict):
            return set(node) | set().union(*(keys(v) for v in node.values()))
        return set().union(*(keys(v) for v in node)) if isinstance(node, list) else set()

    assert not keys(schema) & {"ge", "le", "gt", "lt"}
    validator = jsonschema.Draft202012Validator(schema)
    doc = make_doc(GRID)
    assert list(validator.iter_errors(doc)) == []
    for path, value in ((("dataset", "n"), -5), (("rows", 1, "n"), 10**20), (("rows", 1, "top1"), 5),
                        (("rows", 1, "eps"), -1)):
        bad = json.loads(json.dumps(doc))
        node = bad
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        assert list(validator.iter_errors(bad)), path


def test_schema_errors_are_one_line_for_any_name() -> None:
    from pydantic import BaseModel, ValidationError

    from robench.core.schema_errors import field_path, schema_error

    class Meta(BaseModel):
        lr: float

    with pytest.raises(ValidationError) as caught:
        Meta.model_validate({"lr": "fast"})
    assert str(schema_error("ckpt.safetensors", caught.value, "retrain")) == (
        'ckpt.safetensors: field lr: expected a number, got "fast"; retrain')
    assert field_path(["rows", 3, "top1"]) == "rows[3].top1"
    assert field_path(["versions", "a b\n"]) == 'versions["a b\\n"]'

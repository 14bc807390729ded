"""Issue 27: ``--per-sample FILE.parquet``, the same table as the CSV, typed, with the run's provenance inside."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from robench.core.files import WriteFailed
from robench.data import ids_sha256
from robench.errors import FieldError
from robench.results import write
from tests.results_docs import invoke, one_error_line

pq = pytest.importorskip("pyarrow.parquet")
KEY = b"robench"  # the key-value metadata entry that holds the provenance

META = {"robench": "0", "schema_version": 2, "command": "eval", "config": {"limit": 3, "seed": 0},
        "versions": {"torch": "x"}, "models": [{"label": "m", "spec": "m.pth", "weights_sha256": "ab" * 32}],
        "dataset": {"spec": "d", "n": 3, "ids_sha256": "h", "ids": ["s0", "=s1", "s2"]}}


def per_sample_frame() -> pd.DataFrame:
    """Two models x (clean, fgsm 8) x 3 samples, as EvalResult.per_sample builds it (inf: never fooled)."""
    ids = np.array(["s0", "=s1", "s2"], dtype=object)
    parts = []
    for model, pred in (("m", [[0, 1, 2], [0, 0, 2]]), ("m2", [[1, 1, 2], [1, 0, 0]])):
        parts.append(pd.DataFrame({
            "id": np.tile(ids, 2), "model": model, "attack": np.repeat(["clean", "fgsm"], 3),
            "eps": np.repeat([0.0, 8.0], 3), "label": np.tile(np.array([0, 1, 2], dtype=np.int64), 2),
            "pred": np.array(pred, dtype=np.int32).reshape(-1),
            "top1_correct": (np.array(pred).reshape(-1) == np.tile([0, 1, 2], 2)),
            "top5_correct": np.ones(6, dtype=bool), "min_eps": np.tile([np.inf, 8.0, np.inf], 2)}))
    return pd.concat(parts, ignore_index=True)


def test_parquet_per_sample_equals_the_csv_typed(tmp_path: Path) -> None:
    frame = per_sample_frame()
    write.write_per_sample(tmp_path / "s.csv", frame)
    write.write_per_sample(tmp_path / "s.parquet", frame, META)
    csv, parquet = pd.read_csv(tmp_path / "s.csv"), pd.read_parquet(tmp_path / "s.parquet")
    dtypes = {c: str(t) for c, t in parquet.dtypes.items()}
    assert {c: dtypes[c] for c in ("model", "attack")} == {"model": "category", "attack": "category"}
    assert parquet["attack"].cat.categories.tolist() == ["clean", "fgsm"]
    assert {dtypes[c] for c in ("label", "pred")} <= {"int32", "int64"}
    assert dtypes["top1_correct"] == dtypes["top5_correct"] == "bool"
    assert dtypes["eps"] == dtypes["min_eps"] == "float64" and np.isinf(parquet["min_eps"]).sum() == 8
    assert parquet["id"].tolist() == ["s0", "=s1", "s2"] * 4  # exact: no spreadsheet runs a Parquet cell
    assert csv["id"].tolist() == ["s0", "'=s1", "s2"] * 4  # the CSV's quote for spreadsheets
    assert list(parquet.columns) == list(csv.columns)
    pd.testing.assert_frame_equal(parquet.assign(id=csv["id"]).astype({"model": str, "attack": str}),
                                  csv.astype({"model": str, "attack": str}), check_dtype=False)
    assert parquet["top1_correct"].tolist() == [True, True, True, True, False, True,
                                                False, True, True, False, False, False]


def test_parquet_keeps_the_provenance_in_its_metadata(tmp_path: Path) -> None:
    write.write_per_sample(tmp_path / "s.parquet", per_sample_frame(), META)
    metadata = pq.read_schema(tmp_path / "s.parquet").metadata
    dataset = {k: v for k, v in META["dataset"].items() if k != "ids"}  # the id column holds them
    assert json.loads(metadata[KEY]) == {**META, "dataset": dataset}
    assert b"pandas" in metadata  # pandas restores the categories from it
    write.write_per_sample(tmp_path / "bare.parquet", per_sample_frame())
    assert KEY not in pq.read_schema(tmp_path / "bare.parquet").metadata


@pytest.mark.parametrize("existing", [False, True])
def test_a_failed_parquet_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       existing: bool) -> None:
    path = tmp_path / "s.parquet"
    if existing:
        write.write_per_sample(path, per_sample_frame().head(2), META)
    before = path.read_bytes() if existing else None

    def half_then_fail(table, where, **kwargs) -> None:
        Path(where).write_bytes(b"PAR1 half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "write_table", half_then_fail)
    kept = "the old file is left as it was" if existing else "nothing was written"
    with pytest.raises(WriteFailed, match=f"No space left on device\\); {kept}$"):
        write.write_per_sample(path, per_sample_frame(), META)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["s.parquet"] if existing else [])
    if existing:
        assert path.read_bytes() == before and len(pd.read_parquet(path)) == 2


def no_pyarrow(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import pyarrow`` fail as it does where the parquet extra is not installed."""
    for name in [m for m in sys.modules if m == "pyarrow" or m.startswith("pyarrow.")]:
        monkeypatch.setitem(sys.modules, name, None)


def test_missing_pyarrow_is_one_line_naming_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_pyarrow(monkeypatch)
    result = invoke("eval", "zoo:effnet-base", "--attack", "fgsm", "--per-sample", tmp_path / "s.parquet")
    one_error_line(result, 2, "--per-sample FILE.parquet needs pyarrow", 'pip install "robench[parquet]"')
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FieldError, match=r"^per_sample FILE.parquet needs pyarrow: pip install \"robench\[parquet\]\""):
        write.write_per_sample(tmp_path / "s.parquet", per_sample_frame(), META)
    write.write_per_sample(tmp_path / "s.csv", per_sample_frame())  # CSV needs no pyarrow
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.csv"]


@pytest.mark.slow
def test_eval_per_sample_parquet_matches_the_csv_and_the_results(default_checkpoint: Path, tmp_path: Path) -> None:
    """End to end: the same run written as .csv and .parquet, and its JSON results' provenance in the Parquet."""
    args = ["eval", "-m", default_checkpoint, "--limit", "12", "--attack", "fgsm", "--eps", "2,8", "-q", "--no-health"]
    paths = {s: tmp_path / f"s{s}" for s in (".csv", ".parquet")}
    r_csv = invoke(*args, "--per-sample", paths[".csv"])
    r_parquet = invoke(*args, "--per-sample", paths[".parquet"], "--out", tmp_path / "r.json")
    assert r_csv.exit_code == 0 and r_parquet.exit_code == 0, r_csv.stderr + r_parquet.stderr
    csv, parquet = pd.read_csv(paths[".csv"]), pd.read_parquet(paths[".parquet"])
    assert len(parquet) == 12 * 5 and str(parquet["attack"].dtype) == "category"
    pd.testing.assert_frame_equal(parquet.astype({"model": str, "attack": str}),
                                  csv.astype({"model": str, "attack": str}), check_dtype=False)
    doc = json.loads((tmp_path / "r.json").read_text())
    meta = json.loads(pq.read_schema(paths[".parquet"]).metadata[KEY])
    ids = doc["dataset"].pop("ids")
    assert meta == {k: v for k, v in doc.items() if k not in ("rows", "samples")}
    assert parquet["id"].tolist() == ids * 5 and ids_sha256(ids) == meta["dataset"]["ids_sha256"]
    assert meta["models"][0]["weights_sha256"] and meta["config"]["seed"] == doc["config"]["seed"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "s.csv", "s.parquet"]


@pytest.mark.slow
def test_missing_pyarrow_is_refused_before_torch_is_imported(tmp_path: Path) -> None:
    from tests.test_cli_early import NO_TORCH

    hide = "import sys\nsys.modules['pyarrow'] = sys.modules['pyarrow.parquet'] = None\n"
    proc = subprocess.run([sys.executable, "-c", hide + NO_TORCH, "eval", "--per-sample", "s.parquet"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and lines == [
        'robench: error: --per-sample FILE.parquet needs pyarrow: pip install "robench[parquet]" (or write FILE.csv)',
        "torch imported: False"], proc.stderr
    assert list(tmp_path.iterdir()) == []

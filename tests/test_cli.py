"""The `robench` command line: eval outputs, and exactly one line + exit 2 (no traceback, no file) for bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import timm
from click.testing import CliRunner
from PIL import Image
from results_docs import one_error_line

from robench.cli.eval_cmd import parse_clean_ref
from robench.cli.main import main
from robench.errors import RobenchError, Terminated
from robench.models.checkpoint import save_checkpoint
from robench.run import evaluate


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def stderr_lines(result) -> list[str]:
    return [ln for ln in result.stderr.splitlines() if ln.strip()]


# ---------------------------------------------------------------- eval end to end


@pytest.fixture(scope="module")
def fgsm_run(default_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    """One eval of the default model: 40 digits, FGSM at eps 2 and 8, JSON and per-sample CSV."""
    root = tmp_path_factory.mktemp("eval")
    out, samples = root / "x.json", root / "s.csv"
    result = invoke("eval", "-m", default_checkpoint, "--limit", "40", "--attack", "fgsm", "--eps", "2,8",
                    "--out", out, "--per-sample", samples)
    return result, out, samples


def test_eval_exits_0_and_prints_a_table(fgsm_run) -> None:
    result, _, _ = fgsm_run
    assert result.exit_code == 0, result.stderr
    assert "fgsm" in result.stdout and "clean" in result.stdout
    assert "eps 2/255" in result.stdout and "eps 8/255" in result.stdout
    assert "robench: error" not in result.stderr and "Traceback" not in result.stdout + result.stderr


def test_eval_json_envelope(fgsm_run, default_checkpoint: Path) -> None:
    _, out, _ = fgsm_run
    doc = json.loads(out.read_text())
    assert {"robench", "schema_version", "command", "config", "versions", "dataset", "models", "rows"} <= set(doc)
    assert doc["command"] == "eval" and doc["schema_version"] == 2
    assert doc["config"]["limit"] == 40 and doc["config"]["data"] == "digits"
    assert [a["id"] for a in doc["config"]["suite"]["attacks"]] == ["fgsm"]
    ds = doc["dataset"]
    assert ds["name"] == "digits" and ds["n"] == 40 and len(ds["ids"]) == 40 and len(set(ds["ids"])) == 40
    assert all(i.startswith("digits:") and int(i[7:]) % 5 == 0 for i in ds["ids"])
    from robench.data import ids_sha256

    assert ds["ids_sha256"] == ids_sha256(ds["ids"])
    [model] = doc["models"]
    assert model["spec"] == str(default_checkpoint) and model["arch"] == "test_resnet"
    from robench.models import load_model, parse_spec

    assert model["weights_sha256"] == load_model(parse_spec(str(default_checkpoint)), 10).weights_sha256


def test_eval_json_meets_the_published_schema(fgsm_run, tmp_path: Path) -> None:
    from robench.results.read import load_results

    _, out, _ = fgsm_run
    text = out.read_text()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON: empty rates are null
    doc = load_results(out)
    assert [r["success_rate"] for r in doc["rows"] if r["attack"] == "clean"] == [None]
    r = invoke("schema", "results", "-o", tmp_path / "s.json")
    assert r.exit_code == 0 and json.loads((tmp_path / "s.json").read_text())["title"] == "robench results file"
    one_error_line(invoke("schema", "results", "-o", tmp_path / "s.yaml"), 2, "s.yaml", ".json")


def test_eval_json_rows(fgsm_run) -> None:
    _, out, _ = fgsm_run
    rows = json.loads(out.read_text())["rows"]
    assert all(set(r) == {"model", "attack", "norm", "eps", "top1", "top5", "success_rate", "n", "linf_max", "l2_max"}
               for r in rows)
    assert [r["norm"] for r in rows] == [None, "linf", "linf", "linf", "linf"]
    assert [(r["attack"], r["eps"]) for r in rows] == [("clean", 0.0), ("fgsm", 2.0), ("fgsm", 8.0),
                                                       ("worst", 2.0), ("worst", 8.0)]
    clean, eps2, eps8, worst2, worst8 = rows
    # one attack: the worst case is fgsm's row less the samples fgsm "fixes" (wrong clean, right under fgsm)
    assert worst2["top1"] <= min(clean["top1"], eps2["top1"]) and worst8["top1"] <= min(clean["top1"], eps8["top1"])
    assert clean["success_rate"] is None and all(r["n"] == 40 for r in rows)
    assert clean["top1"] >= 0.9  # the shipped model is accurate on digits
    assert eps8["top1"] < eps2["top1"] < clean["top1"]
    assert all(0.0 <= r["top1"] <= r["top5"] <= 1.0 for r in rows)
    assert 0.0 < eps8["success_rate"] <= 1.0
    # fgsm moves every unclipped pixel by exactly eps, so the largest move is eps (in 1/255 units)
    assert clean["linf_max"] == 0.0
    assert eps2["linf_max"] == pytest.approx(2.0, abs=1e-3) and eps8["linf_max"] == pytest.approx(8.0, abs=1e-3)


def test_eval_per_sample_csv(fgsm_run) -> None:
    _, out, samples = fgsm_run
    rows = json.loads(out.read_text())["rows"]
    ids = json.loads(out.read_text())["dataset"]["ids"]
    frame = pd.read_csv(samples)
    assert len(frame) == 40 * 5
    assert list(frame.columns) == ["id", "model", "attack", "eps", "label", "pred", "top1_correct", "top5_correct",
                                   "min_eps"]
    assert frame["id"].tolist() == ids * 5
    # min_eps: 0 when wrong clean, else the smallest eps fgsm fooled it at, else inf
    clean = frame[frame.attack == "clean"].set_index("id")
    at = {e: frame[(frame.attack == "fgsm") & (frame.eps == e)].set_index("id")["top1_correct"] for e in (2.0, 8.0)}
    expected = [0.0 if not clean.loc[i, "top1_correct"] else 2.0 if not at[2.0][i] else 8.0 if not at[8.0][i]
                else float("inf") for i in ids]
    assert clean["min_eps"].tolist() == expected
    for r in rows:
        part = frame[(frame.attack == r["attack"]) & (frame.eps == r["eps"])]
        assert len(part) == 40 and part["top1_correct"].mean() == pytest.approx(r["top1"])
        assert part["top5_correct"].mean() == pytest.approx(r["top5"])


def test_eval_autoattack_l2_end_to_end(tmp_path: Path) -> None:
    """The autoattack-l2 suite on a zoo model: L2 rows within eps, a worst-l2 row, read back from .json and .csv,
    gated by an L2 rule."""
    from robench.results.read import load_results

    out, csv = tmp_path / "l2.json", tmp_path / "l2.csv"
    r = invoke("eval", "zoo:resnet-base", "--attacks", "autoattack-l2", "--eps", "0.5,1", "--limit", "12",
               "--batch-size", "12", "-q", "--out", out, "--out", csv)
    assert r.exit_code == 0, r.stderr
    for doc in (load_results(out), load_results(csv)):
        rows = {(row["attack"], row["eps"]): row for row in doc["rows"]}
        assert set(rows) == {("clean", 0.0)} | {(a, e) for a in ("apgd-ce", "apgd_t", "fab_t", "square", "worst-l2")
                                                for e in (0.5, 1.0)}
        assert rows[("clean", 0.0)]["norm"] is None and rows[("clean", 0.0)]["l2_max"] == 0.0
        for (attack, eps), row in rows.items():
            if attack != "clean":
                assert row["norm"] == "l2" and 0 < row["l2_max"] <= eps + 1e-5, (attack, eps, row)
        assert rows[("worst-l2", 1.0)]["top1"] <= rows[("worst-l2", 0.5)]["top1"] < rows[("clean", 0.0)]["top1"]
    assert load_results(out)["health"] == []
    gates = tmp_path / "gates.yaml"
    gates.write_text("rules:\n  - {attack: worst-l2, norm: l2, eps: 0.5, max: 0.99}\n")
    r = invoke("gate", out, "--rules", gates)
    assert r.exit_code == 0, r.stderr


def test_eval_refuses_an_l2_eps_beyond_the_data_and_eps_on_a_mixed_suite(tmp_path: Path) -> None:
    one_error_line(invoke("eval", "zoo:resnet-base", "--attacks", "autoattack-l2", "--eps", "56", "--limit", "4"),
                   2, "L2 eps 56 of 'apgd-ce' is above 55.43, the largest L2 distance between two images of 3x32x32 "
                      "pixels (model 'resnet-base')")
    mixed = tmp_path / "mixed.yaml"
    mixed.write_text("attacks:\n  - {name: fgsm, norm: linf, eps: [8]}\n  - {name: fgsm, id: fgm, norm: l2, "
                     "eps: [0.5]}\n")
    one_error_line(invoke("eval", "zoo:resnet-base", "--attacks", mixed, "--eps", "8", "--limit", "4"), 2,
                   "--eps gives every attack one eps list, but these attacks mix norms")
    one_error_line(invoke("eval", "zoo:resnet-base", "--attacks", "autoattack-l2", "--eps", "0.5,0.5"), 2,
                   "--eps: eps 0.5 is given twice; give each eps once")  # not L-inf's unit trap
    one_error_line(invoke("eval", "zoo:resnet-base", "--attacks", "autoattack-l2", "--eps", "0.5", "--eps-unit",
                          "pixel"), 2, "--eps-unit pixel says how L-inf eps read; these attacks are L2")


def test_eval_csv_writes_rows_and_meta(default_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.csv"
    result = invoke("eval", "-m", default_checkpoint, "--limit", "10", "--attack", "step_ll", "--eps", "4", "-q",
                    "--out", out)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""  # -q: no table
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["model", "attack", "norm", "eps", "top1", "top5", "success_rate", "n", "linf_max",
                                   "l2_max"]
    assert frame["attack"].tolist() == ["clean", "step_ll", "worst"] and frame["eps"].tolist() == [0.0, 4.0, 4.0]
    meta = json.loads((tmp_path / "x.csv.meta.json").read_text())
    assert meta["dataset"]["n"] == 10 and meta["command"] == "eval" and "rows" not in meta


def test_eval_md_has_a_table(default_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.md"
    result = invoke("eval", f"mine={default_checkpoint}", "--limit", "10", "--attack", "fgsm", "--eps", "8/255",
                    "-q", "--out", out)
    assert result.exit_code == 0, result.stderr
    text = out.read_text()
    assert text.startswith("# robench eval\n") and "n = 10" in text
    assert "| model | attack | norm | eps | top1 | top5 | success_rate | n |" in text
    assert "| mine | clean |  | 0 |" in text and "| mine | fgsm | linf | 8 |" in text  # clean: no norm


def test_eval_without_a_model_uses_the_zoo_default(tmp_path: Path) -> None:
    out = tmp_path / "x.json"
    result = invoke("eval", "--limit", "20", "--attack", "fgsm", "--eps", "8", "-q", "--out", out)
    assert result.exit_code == 0, result.stderr
    doc = json.loads(out.read_text())
    assert [m["label"] for m in doc["models"]] == ["effnet-base", "effnet-stepll"]
    assert len(doc["rows"]) == 6 and all(r["n"] == 20 for r in doc["rows"])  # clean, fgsm, worst per model


@pytest.mark.slow
def test_default_run_is_meaningful(tmp_path: Path) -> None:
    """The built-in default (the zoo's baseline and step_ll pair): accurate, and the paper's finding 1."""
    out = tmp_path / "r.json"
    result = invoke("eval", "--attack", "fgsm", "--attack", "step_ll", "-q", "--out", out)
    assert result.exit_code == 0, result.stderr
    doc = json.loads(out.read_text())
    assert [m["label"] for m in doc["models"]] == ["effnet-base", "effnet-stepll"]
    top1 = {(r["model"], r["attack"], r["eps"]): r["top1"] for r in doc["rows"]}
    for model in ("effnet-base", "effnet-stepll"):
        clean = top1[(model, "clean", 0.0)]
        assert clean > 0.95
        for attack in ("fgsm", "step_ll"):
            curve = [clean] + [top1[(model, attack, e)] for e in (2.0, 4.0, 8.0, 16.0)]
            assert curve == sorted(curve, reverse=True)
    for attack in ("fgsm", "step_ll"):  # step_ll training keeps far more accuracy at eps 8
        assert top1[("effnet-stepll", attack, 8.0)] > top1[("effnet-base", attack, 8.0)] + 0.15


# ---------------------------------------------------------------- bad input: exit 2, one line, nothing written

BAD_YAML = """\
eps: [2, 4]
attacks:
  - name: fgsm
  - name: pgd
    steps: ten
"""


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Inputs that must each be refused with one line."""
    root = tmp_path_factory.mktemp("bad")
    empty = root / "empty"
    (empty / "cat").mkdir(parents=True)
    corrupt = root / "corrupt"
    for cls in ("cat", "dog"):
        (corrupt / cls).mkdir(parents=True)
        Image.new("RGB", (12, 12), (40, 90, 200)).save(corrupt / cls / "ok.png")
    (corrupt / "dog" / "broken.png").write_bytes(b"\x89PNG but not really" * 5)
    (root / "bad.yaml").write_text(BAD_YAML)
    (root / "syntax.yaml").write_text("eps: [2, 4]\nattacks:\n  - name: fgsm\n    label: [true\n")
    import torch

    torch.save(timm.create_model("test_efficientnet", num_classes=10).state_dict(), root / "effnet.pth")
    for n in (2, 5):
        save_checkpoint(root / f"classes{n}.safetensors", timm.create_model("test_resnet", num_classes=n),
                        {"arch": "test_resnet", "num_classes": n, "input_size": [3, 32, 32]})
    return {"root": root, "empty": empty, "corrupt": corrupt}


BAD_INPUTS = {
    "unknown model": (["-m", "test_resnt"], ["unknown model 'test_resnt'", "did you mean", "test_resnet"]),
    "checkpoint of another arch": (["-m", "test_resnet@{root}/effnet.pth"],
                                   ["does not fit test_resnet", "missing keys", "unexpected keys"]),
    "missing checkpoint": (["-m", "test_resnet@{root}/nope.pth"], ["checkpoint not found", "nope.pth"]),
    "missing checkpoint alone": (["-m", "{root}/nope.safetensors"], ["checkpoint not found"]),
    "missing data folder": (["--data", "{root}/no-such-folder"], ["dataset folder not found", "no-such-folder"]),
    "empty image folder": (["-m", "{root}/classes2.safetensors", "--data", "{empty}"], ["no images found"]),
    "corrupt image": (["-m", "{root}/classes2.safetensors", "--data", "{corrupt}"],
                      ["cannot read image", "dog/broken.png"]),
    "bad yaml type": (["--attacks", "{root}/bad.yaml"], ["bad.yaml line 5", "'steps'", "must be int"]),
    "bad yaml syntax": (["--attacks", "{root}/syntax.yaml"], ["syntax.yaml line 5", "invalid YAML"]),
    "missing yaml": (["--attacks", "{root}/none.yaml"], ["attack suite file not found"]),
    "unknown attack": (["--attack", "fgsmm"], ["unknown attack 'fgsmm'", "did you mean fgsm"]),
    "attack twice": (["--attack", "fgsm", "--attack", "fgsm"], ["--attack fgsm is given twice"]),
    "eps too large": (["--eps", "300"], ["--eps", "out of range"]),
    "eps negative": (["--eps", "2,-4"], ["out of range"]),
    "eps not a number": (["--eps", "abc"], ["--eps", "not a number"]),
    "eps code": (["--eps", "__import__('os').getcwd()"], ["not a number"]),
    "eps twice": (["--eps", "8,8"], ["--eps: eps 8 is given twice; give each eps once"]),
    "eps twice in two forms": (["--eps", "4,8.0,8/255"], ["--eps: eps 8 is given twice (8.0 and 8/255 are both 8"]),
    "limit too large": (["--limit", "100000"], ["--limit 100000 is more than the 360 samples", "--limit 360"]),
    "limit zero": (["--limit", "0"], ["'--limit': 0 is not in the range x>=1"]),
    "limit not an int": (["--limit", "many"], ["'--limit'", "not a valid integer"]),
    "num_classes mismatch": (["-m", "{root}/classes5.safetensors"], ["has 5 classes", "digits has 10"]),
    "duplicate labels": (["-m", "a=test_resnet", "-m", "a=test_efficientnet"], ["two models are labelled 'a'"]),
    "unknown option": (["--bogus-option"], ["No such option", "--bogus-option"]),
    "batch size 0": (["--batch-size", "0"], ["'--batch-size'", "0 is not in the range"]),
    "unknown device": (["--device", "tpu9"], ["unknown device 'tpu9' for --device"]),
    "device meta": (["--device", "meta"], ["unknown device 'meta' for --device"]),
    "resume inside a file": (["--resume", "{root}/classes5.safetensors/state"], ["--resume", "cannot be created"]),
    "clean-ref names no model": (["--clean-ref", "nope=0.9"], ["--clean-ref names 'nope', which is not a model"]),
    "per-sample suffix": (["--per-sample", "{root}/s.json"], ["--per-sample", "unknown format '.json'"]),
}


@pytest.mark.parametrize(("args", "needles"), list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_2(args: list[str], needles: list[str], bad: dict[str, Path],
                                          default_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.json"
    args = [a.format(**{k: str(v) for k, v in bad.items()}) for a in args]
    limit = [] if "--limit" in args else ["--limit", "3"]
    result = invoke("eval", *args, *limit, "--attack" if "--attack" not in args else "--seed",
                    "fgsm" if "--attack" not in args else "1", "--out", out)
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = stderr_lines(result)
    assert result.stderr.splitlines() == lines and len(lines) == 1, result.stderr  # no blank line either
    assert lines[0].startswith("robench: error: ") and len(lines[0]) > len("robench: error: ") + 10
    assert "Traceback" not in result.stdout + result.stderr
    assert not out.exists() and not list(tmp_path.iterdir())
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("name", ["x.txt", "x", "x.JSONL"])
def test_unknown_output_suffix(tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    result = invoke("eval", "--out", out)
    assert result.exit_code == 2
    lines = stderr_lines(result)
    assert len(lines) == 1 and lines[0].startswith(f"robench: error: --out {out}: unknown format")
    assert "use one of .json, .csv, .md" in lines[0]
    assert not out.exists() and not list(tmp_path.iterdir())


def test_output_folder_must_exist(tmp_path: Path) -> None:
    out = tmp_path / "missing" / "x.json"
    result = invoke("eval", "--out", out)
    assert result.exit_code == 2 and stderr_lines(result) == [
        f"robench: error: --out {out}: folder {out.parent} does not exist; create it first"
    ]


def test_out_to_stdout_is_refused_as_its_format_comes_from_the_suffix(tmp_path: Path) -> None:
    result = invoke("eval", "--out", "-")
    one_error_line(result, 2, "--out -: the format comes from the file name's suffix (.json, .csv, .md)")
    assert result.stdout == ""


def test_csv_out_whose_provenance_file_is_a_folder_fails_before_any_work(tmp_path: Path) -> None:
    """The folder used to be found after the whole run (exit 3): now one line, exit 2, before it."""
    (tmp_path / "side.csv.meta.json").mkdir()
    result = invoke("eval", "--out", tmp_path / "side.csv")
    one_error_line(result, 2, f"--out {tmp_path / 'side.csv'}: its provenance file {tmp_path / 'side.csv.meta.json'}"
                   " is a folder; remove it or give --out another name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["side.csv.meta.json"]


def test_top_level_usage_error_is_one_line() -> None:
    result = invoke("--bogus")
    assert result.exit_code == 2
    lines = stderr_lines(result)
    assert len(lines) == 1 and lines[0].startswith("robench: error: No such option") and "--bogus" in lines[0]
    assert lines[0].endswith("--help')") and "Traceback" not in result.stderr


def test_unknown_command_is_one_line() -> None:
    result = invoke("evl")
    assert result.exit_code == 2
    lines = stderr_lines(result)
    assert len(lines) == 1 and lines[0].startswith("robench: error: No such command 'evl'")


@pytest.mark.parametrize(("error", "code", "text"), [(KeyboardInterrupt(), 130, "interrupted"),
                                                     (Terminated(), 143, "terminated (SIGTERM)"),
                                                     (ValueError("boom"), 3, "runtime error: ValueError: boom"),
                                                     (RuntimeError("boom\nframe #0: c10::Error\nframe #1: ..."), 3,
                                                      "runtime error: RuntimeError: boom (set ROBENCH_DEBUG=1")])
def test_interrupt_and_runtime_error_codes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, error, code, text) -> None:
    import robench.run.evaluate

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(robench.run.evaluate, "run_eval", fail)
    out = tmp_path / "r.json"
    result = invoke("eval", "--out", out)
    assert result.exit_code == code
    lines = stderr_lines(result)
    assert len(lines) == 1 and text in lines[0] and "Traceback" not in result.stderr
    assert not out.exists()


def test_no_command_shows_help_not_an_error() -> None:
    result = invoke()
    assert result.exit_code == 2
    assert result.stderr.startswith("Usage: ") and "Commands:" in result.stderr and "eval" in result.stderr
    assert "robench: error" not in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------- help and imports


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["eval", "--help"], ["zoo", "list", "--help"]])
def test_help_mentions_exit_codes(args: list[str]) -> None:
    result = invoke(*args)
    assert result.exit_code == 0 and result.stderr == ""
    assert "Exit codes" in result.stdout
    for code, meaning in (("0", "ok"), ("2", "bad usage or input"), ("3", "runtime error"), ("130", "interrupted")):
        assert f"{code}  " in result.stdout and meaning in result.stdout


def test_eval_help_documents_eps_units() -> None:
    result = invoke("eval", "--help")
    assert "1/255" in result.stdout and "--limit" in result.stdout and "--per-sample" in result.stdout


@pytest.mark.parametrize("command", ["eval"])  # transfer-matrix has no default (tests/test_cli_boundary.py)
def test_help_names_the_default_models(command: str) -> None:
    """No model evaluates the zoo's default pair; the help says which (it once said "a tiny timm model")."""
    from robench.run.runspec import DEFAULT

    result = invoke(command, "--help")
    text = " ".join(re.sub(r"-\n\s+", "-", result.stdout).split())  # help wraps lines at hyphens too
    assert len(DEFAULT) == 2 and "a tiny timm model" not in text
    assert f"Default: zoo:{DEFAULT[0]} and zoo:{DEFAULT[1]}, together" in text


def test_version() -> None:
    from robench import __version__

    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"robench, version {__version__}"


def test_cli_import_does_not_import_torch(tmp_path: Path) -> None:
    code = "import sys, robench.cli.main; print(sorted(m for m in ('torch', 'timm') if m in sys.modules))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_no_top_level_cli_module(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-c", "import cli"], capture_output=True, text=True, cwd=tmp_path,
                         timeout=60)
    assert run.returncode != 0 and "No module named 'cli'" in run.stderr


def test_console_script_is_installed(tmp_path: Path) -> None:
    from importlib.metadata import entry_points

    [script] = [e for e in entry_points(group="console_scripts") if e.name == "robench"]
    assert script.value == "robench.cli.main:main"


# --- --clean-ref ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "parsed"), [("base=0.97", ("base", 0.97)), ("a=b=1", ("a=b", 1.0)),
                                              ("zoo:x=0", ("zoo:x", 0.0))])
def test_parse_clean_ref(text: str, parsed: tuple[str, float]) -> None:
    assert parse_clean_ref(text) == parsed


@pytest.mark.parametrize("text", ["base", "=0.9", "base=", "base=x", "base=1.5", "base=-0.1", "base=nan", "base=97%"])
def test_parse_clean_ref_errors(text: str) -> None:
    with pytest.raises(RobenchError) as e:
        parse_clean_ref(text)
    message = str(e.value)
    assert "\n" not in message and f"--clean-ref {text!r}" in message and "LABEL=SHARE" in message


def test_cli_clean_ref_mistakes_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(evaluate.engine, "run", lambda *a, **k: pytest.fail("evaluated despite a bad reference"))
    for ref, needle in (("effnet=0.9", "--clean-ref names 'effnet', which is not a model; labels: effnet-base"),
                        ("effnet-base=95", "LABEL=SHARE")):
        r = invoke("eval", "zoo:effnet-base", "--limit", "10", "--clean-ref", ref, "--out", str(tmp_path / "r.json"))
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.exit_code == 2 and len(lines) == 1 and needle in lines[0], r.stderr
    assert not (tmp_path / "r.json").exists()


def test_a_warning_is_one_line_however_long(capsys: pytest.CaptureFixture[str]) -> None:
    from robench.render.console import warn

    warn("cache file /tmp/" + "a" * 300 + ".safetensors is unreadable [SafetensorError]; crafting it again")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("robench: warning: cache file") and "[SafetensorError]" in err


# ---------------------------------------------------------------- suites by name, cascade, early stopping


def test_suites_lists_the_built_ins() -> None:
    r = invoke("suites")
    assert r.exit_code == 0, r.stderr
    for name in ("paper (default)", "autoattack", "autoattack-fast", "quick", "apgd-ce", "cascade", "4/255", "transfer",
                 "di-ti-mi"):
        assert name in r.stdout, name


def test_eval_by_suite_name_with_cascade_labels_the_rows(default_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    r = invoke("eval", default_checkpoint, "--attacks", "quick", "--eps", "4", "--limit", "20", "--cascade",
               "--out", out)
    assert r.exit_code == 0, r.stderr
    assert "after fgsm" in r.stdout and "after pgd-10" in r.stdout and "worst case" in r.stdout
    assert "robust after this stage" in r.stdout
    doc = json.loads(out.read_text())
    assert doc["config"]["suite"]["cascade"] is True and doc["config"]["suite"]["source"] == "quick (built-in)"
    assert doc["semantics"].startswith("robust after this stage (cascade)")
    top1 = {(row["attack"], row["eps"]): row["top1"] for row in doc["rows"]}
    assert top1[("pgd-10", 4.0)] == top1[("worst", 4.0)] <= top1[("fgsm", 4.0)]  # the last stage is the worst case
    assert [c["attack"] for c in doc["cost"]] == ["fgsm", "pgd-10"] and doc["cost"][0]["backward_passes"] <= 20
    assert [p["eps"] for p in doc["robustness_curve"][doc["models"][0]["label"]]] == [0.0, 4.0]


def test_targeted_attack_on_two_classes_is_one_line(tmp_path: Path) -> None:
    for label in ("a", "b"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (40 * i, 90, 200)).save(tmp_path / "data" / label / f"{i}.png")
    suite = tmp_path / "s.yaml"
    suite.write_text("eps: [8]\nattacks:\n  - name: apgd\n  - name: apgd_t\n")
    r = invoke("eval", "test_resnet", "--data", tmp_path / "data", "--attacks", suite, "--out", tmp_path / "r.json")
    one_error_line(r, 2, f"{suite} line 4: attack 'apgd_t' needs at least 4 classes", "has 2")
    assert not (tmp_path / "r.json").exists()


def test_transfer_matrix_runs_a_cascade_suite_at_full_strength(tmp_path: Path) -> None:
    out = tmp_path / "t.json"
    r = invoke("transfer-matrix", "zoo:resnet-base", "--attacks", "autoattack-fast", "--attack", "apgd-ce",
               "--eps", "8", "--limit", "8", "-q", "--out", out)
    assert r.exit_code == 0, r.stderr
    assert "transfer-matrix runs every attack on every sample at full strength" in r.stderr
    doc = json.loads(out.read_text())
    assert doc["semantics"] == "each attack on every sample; full iterations at every eps"
    assert all(row["attack"] != "worst" for row in doc["rows"])


# ---------------------------------------------------------------- progress line


def _rendered(drive) -> str:
    """What a terminal shows for a bar driven by ``drive(update)``: rich's own rendering, captured."""
    import io

    from robench.render.console import progress_bar

    stream = io.StringIO()
    with progress_bar(stream=stream) as reporter:
        drive(reporter)
    return stream.getvalue()


def test_progress_line_shows_a_rate_and_eta_from_the_first_batch() -> None:
    """One finished batch is enough (rich's own speed needs two updates less than 30 s apart)."""
    import re
    import time

    def drive(reporter) -> None:
        reporter.progress("eval", 0, 300)  # the engine's start report
        time.sleep(0.05)
        reporter.progress("eval", 100, 300)

    text = [ln for ln in _rendered(drive).splitlines() if "/300" in ln][-1]  # the bar's last state
    assert re.search(r"\d[\d,.]* images/s", text) and "- images/s" not in text, text
    assert re.search(r"eta \d+:\d\d:\d\d", text) and "eta -" not in text, text


def test_progress_rate_counts_only_this_runs_images() -> None:
    """A resumed run starts at what the state holds: those images are not part of its rate."""
    import re
    import time

    def drive(reporter) -> None:
        reporter.progress("eval", 900, 1000)
        time.sleep(0.2)
        reporter.progress("eval", 910, 1000)

    rate = float(re.search(r"([\d,.]+) images/s", _rendered(drive)).group(1).replace(",", ""))
    assert rate < 100  # 10 images in >= 0.2 s, not 910


def test_progress_bar_shows_the_stage_from_the_probes_on() -> None:
    """The health probes show before any image is done, and their time is not part of the rate."""
    import re
    import time

    def drive(reporter) -> None:
        reporter.status("eval", "health probes on a (1/1)")
        time.sleep(1.0)
        reporter.progress("eval", 0, 300)  # the engine's start: the rate counts from here
        reporter.status("eval", "pgd on a")
        reporter.progress("eval", 100, 300)

    text = _rendered(drive)
    assert "health probes on a (1/1)" in text and "  pgd on a" in text  # on a line below the bar
    last = [ln for ln in text.splitlines() if "/300" in ln][-1]
    assert float(re.search(r"([\d,.]+) images/s", last).group(1).replace(",", "")) > 200  # not 100 in >= 1 s


def test_a_finished_epochs_rate_stops_with_it() -> None:
    """rich keeps a finished task's clock running: an epoch's examples/s must not fall while later ones train."""
    import io
    import re
    import time

    from robench.render.console import epoch_bar
    from robench.train.loop import EpochStats

    stream = io.StringIO()
    with epoch_bar(2, stream=stream) as update:
        update(EpochStats(1, 0, 100, 0.0, 0.0))
        time.sleep(0.05)
        update(EpochStats(1, 100, 100, 1.0, 0.5))
        update(EpochStats(2, 0, 100, 0.0, 0.0))
        time.sleep(0.5)  # epoch 1 is over: 100 examples in about 0.05 s, not in 0.55 s
        update(EpochStats(2, 100, 100, 1.0, 0.5))
    first = [ln for ln in stream.getvalue().splitlines() if "epoch 1/2" in ln][-1]
    assert float(re.search(r"([\d,.]+) examples/s", first).group(1).replace(",", "")) > 400, first


def test_engine_reports_its_start_before_the_first_batch(default_checkpoint: Path) -> None:
    """The callback hears (label, done, total) once before any batch, so every rate counts from the start; then
    after each attack (here one per batch)."""
    from robench.attacks.suite import load_suite, override
    from robench.run.runspec import RunSpec

    calls: list[tuple[str, float, int]] = []
    cfg = evaluate.EvalConfig((str(default_checkpoint),), RunSpec(suite=override(load_suite(), ("fgsm",), (2.0,)),
                                                                  limit=6, batch_size=3, health_probes=False))
    evaluate.run_eval(cfg, lambda *a: calls.append(a))
    assert calls == [("eval", 0, 6), ("eval", 3, 6), ("eval", 6, 6)]


def test_epoch_bar_shows_examples_per_second() -> None:
    """Training's bar counts examples/s from the epoch's start report on."""
    import io
    import re
    import time

    from robench.render.console import epoch_bar
    from robench.train.loop import EpochStats

    stream = io.StringIO()
    with epoch_bar(1, stream=stream) as update:
        update(EpochStats(1, 0, 128, 0.0, 0.0))
        time.sleep(0.05)
        update(EpochStats(1, 64, 128, 1.5, 0.5))
    last = [ln for ln in stream.getvalue().splitlines() if "64/128" in ln][-1]
    assert re.search(r"\d[\d,.]* examples/s", last) and re.search(r"eta \d+:\d\d:\d\d", last), last
    assert "acc 50.0%" in last and "adv" not in last, last
    stream = io.StringIO()
    with epoch_bar(1, stream=stream) as update:  # adv_fraction 1: no clean examples, an adversarial share
        update(EpochStats(1, 0, 128, 0.0, None))
        update(EpochStats(1, 64, 128, 1.5, None, 0.25))
    assert "acc - adv 25.0%" in [ln for ln in stream.getvalue().splitlines() if "64/128" in ln][-1]


def test_threads_is_applied_and_recorded(default_checkpoint: Path, tmp_path: Path) -> None:
    """--threads 1: the config records the option, the provenance the thread count that ran."""
    import torch

    before = torch.get_num_threads()
    try:
        result = invoke("eval", "-m", default_checkpoint, "--limit", "4", "--attack", "fgsm", "--eps", "2",
                        "--threads", "1", "--out", tmp_path / "x.json", "-q")
        assert result.exit_code == 0, result.stderr
    finally:
        torch.set_num_threads(before)
    doc = json.loads((tmp_path / "x.json").read_text())
    assert doc["config"]["threads"] == 1 and doc["versions"]["torch_threads"] == "1"


# ---------------------------------------------------------------- class order of image folders


@pytest.fixture(scope="module")
def numbered(class_folder, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folders 1, 2, 10 and three-class test_resnet checkpoints: recording torchvision's order, natural, none."""
    root = tmp_path_factory.mktemp("numbered")
    paths = {"data": class_folder("1", "2", "10")}
    fashion = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    for name, classes in (("lexical", ["1", "10", "2"]), ("natural", ["1", "2", "10"]), ("plain", None),
                          ("other", ["1", "2", "3"]), ("fashion", fashion)):
        meta = {"arch": "test_resnet", "num_classes": len(classes or "123"), "input_size": [3, 32, 32],
                "interpolation": "bilinear", "crop_pct": 1.0, "mean": [0.5] * 3, "std": [0.5] * 3}
        if classes is not None:
            meta["classes"] = classes
        paths[name] = root / f"{name}.safetensors"
        save_checkpoint(paths[name], timm.create_model("test_resnet", num_classes=meta["num_classes"]), meta)
    (root / "twice.txt").write_text("1\n2\n1\n")
    paths["twice"] = root / "twice.txt"
    (root / "lexical.txt").write_text("1\n10\n2\n")
    paths["list"] = root / "lexical.txt"
    return paths


def _eval_folder(numbered: dict[str, Path], out: Path, *args: str):
    return invoke("eval", "--data", numbered["data"], "--attack", "fgsm", "--eps", "2", "-q", "-o", out, *args)


def test_a_checkpoints_classes_number_the_folder(numbered: dict[str, Path], tmp_path: Path) -> None:
    result = _eval_folder(numbered, tmp_path / "out.json", "-m", numbered["lexical"])
    assert result.exit_code == 0, result.stderr
    assert "sort differently" not in result.stderr
    doc = json.loads((tmp_path / "out.json").read_text())
    assert doc["dataset"]["classes"] == ["1", "10", "2"] and doc["config"]["class_order"] == "natural"


@pytest.mark.parametrize(("args", "classes", "warned"), [
    ((), ["1", "2", "10"], True), (("--class-order", "lexical"), ["1", "10", "2"], False),
    (("--classes", "{list}"), ["1", "10", "2"], False),
])
def test_class_order_option(numbered: dict[str, Path], tmp_path: Path, args: tuple[str, ...], classes: list[str],
                            warned: bool) -> None:
    args = tuple(a.format(**numbered) for a in args)
    result = _eval_folder(numbered, tmp_path / "out.json", "-m", numbered["plain"], *args)
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count("class folders sort differently naturally (1, 2, 10) and as strings") == int(warned)
    assert json.loads((tmp_path / "out.json").read_text())["dataset"]["classes"] == classes


CLASS_ERRORS = {
    "two class lists": (["-m", "{lexical}", "-m", "{natural}"], ["models 'lexical'", "and 'natural'",
                                                                 "record different classes"]),
    "folder not in the list": (["-m", "{other}"], ["class folder '10' not named in the classes of model 'other'"]),
    "duplicate in --classes": (["-m", "{plain}", "--classes", "{twice}"], ["--classes file", "'1' is named twice"]),
    "fashion model on digits": (["-m", "{fashion}", "--data", "digits", "--limit", "3"],
                                ["data digits has the classes", "T-shirt/top", "model 'fashion'"]),
}


@pytest.mark.parametrize(("args", "needles"), list(CLASS_ERRORS.values()), ids=list(CLASS_ERRORS))
def test_class_list_errors(numbered: dict[str, Path], tmp_path: Path, args: list[str], needles: list[str]) -> None:
    out = tmp_path / "out.json"
    result = _eval_folder(numbered, out, *(a.format(**numbered) for a in args))
    one_error_line(result, 2, *needles)
    assert not out.exists()


def test_train_records_the_folders_classes(numbered: dict[str, Path], tmp_path: Path) -> None:
    """train numbers folders as eval does, and its checkpoint says how (classes; the recipe's class_order)."""
    from robench.models.checkpoint import read_metadata

    out = tmp_path / "m.safetensors"
    result = invoke("train", "--data", numbered["data"], "--class-order", "lexical", "--epochs", "1", "--batch-size",
                    "2", "--image-size", "8", "--train-attack", "none", "-q", "-o", out)
    assert result.exit_code == 0, result.stderr
    meta = read_metadata(out)
    assert meta["classes"] == ["1", "10", "2"] and meta["recipe"]["class_order"] == "lexical"
    assert "classes" not in meta["recipe"]  # left out at its default


@pytest.mark.parametrize("command", ["eval", "transfer-matrix", "leak-check", "train"])
def test_class_options_on_every_command_that_reads_folders(command: str) -> None:
    result = invoke(command, "--help")
    assert "--class-order" in result.stdout and "--classes FILE" in result.stdout


def test_eps_in_pixels_gives_the_rows_of_its_1_255_value(tmp_path: Path, default_checkpoint: Path) -> None:
    """--eps-unit pixel --eps 0.3 is --eps 76.5; --eps 0.3 alone is the unit trap: exit 2, no file."""
    docs = []
    for args in (["--eps-unit", "pixel", "--eps", "0.3"], ["--eps", "76.5"], ["--eps", "0.3px"]):
        out = tmp_path / f"{len(docs)}.json"
        result = invoke("eval", "-m", default_checkpoint, "--attack", "fgsm", "--limit", "30", "-q", "--no-health",
                        *args, "-o", out)
        assert result.exit_code == 0, result.stderr
        docs.append([{k: r[k] for k in ("attack", "eps", "top1", "top5")} for r in json.loads(out.read_text())["rows"]])
    assert docs[0] == docs[1] == docs[2] and docs[0][1]["eps"] == 76.5
    result = invoke("eval", "-m", default_checkpoint, "--attack", "fgsm", "--eps", "0.3", "-o", tmp_path / "x.json")
    one_error_line(result, 2, "eps 0.3 is in 1/255 units, i.e. 0.0012 in pixels. Did you mean 0.3 in pixels? "
                              "Write 76.5 or 0.3*255 or 76.5/255")
    assert not (tmp_path / "x.json").exists()
    one_error_line(invoke("leak-check", "--eps", "0.031", "-o", tmp_path / "l.json"), 2, "eps 0.031 is in 1/255")


def test_several_outs_write_each_and_a_path_twice_is_refused(tmp_path: Path, default_checkpoint: Path) -> None:
    """--out a.json --out a.md --out a.csv kept only the last, silently."""
    outs = [tmp_path / "a.json", tmp_path / "a.md", tmp_path / "a.csv"]
    result = invoke("eval", "-m", default_checkpoint, "--attack", "fgsm", "--eps", "8", "--limit", "20", "-q",
                    "--no-health", *[x for o in outs for x in ("--out", o)])
    assert result.exit_code == 0, result.stderr
    assert all(o.is_file() for o in outs) and (tmp_path / "a.csv.meta.json").is_file()
    assert json.loads(outs[0].read_text())["rows"][0]["attack"] == "clean"
    (tmp_path / "sub").mkdir()
    result = invoke("leak-check", "--out", tmp_path / "l.json", "--out", tmp_path / "sub" / ".." / "l.json")
    one_error_line(result, 2, "l.json and --out", "are the same file")
    one_error_line(invoke("leak-check", "--out", tmp_path / "l.json", "--out", tmp_path / "l.json"), 2,
                   "l.json is given twice")
    assert not (tmp_path / "l.json").exists()


def test_progress_without_a_terminal_is_plain_lines() -> None:
    """A CI log (stderr redirected) showed nothing until the end: now the first stage at once, lines as attacks
    start once the interval has passed, and the last."""
    import io
    import re

    from robench.render.console import progress_bar

    stream = io.StringIO()
    with progress_bar(stream=stream, terminal=False) as reporter:
        reporter.status("eval", "health probes on a (1/1)")  # the first stage: a line at once
        reporter.progress("eval", 0, 300)  # the engine's start report: no line
        reporter.status("eval", "fgsm on a")  # within the interval: none
        reporter.progress("eval", 50.0, 300)  # within a batch: never a line of its own
        reporter.progress("eval", 300, 300)  # the end: a line
        reporter.progress("eval", 300, 300)  # the batch's end report after its last attack's: no second line
    lines = stream.getvalue().splitlines()
    assert "\x1b" not in stream.getvalue()  # no terminal codes in a log
    assert lines[0] == "eval: health probes on a (1/1)" and len(lines) == 2, lines
    assert re.fullmatch(r"eval: 300/300 images, [\d,.]+ images/s, eta 0:00:00, elapsed \d+ s", lines[1])


def test_log_lines_name_the_attack_now_once_the_interval_passed() -> None:
    import io
    import re

    from robench.render.console import LogLines

    stream = io.StringIO()
    lines = LogLines(stream, every=0.0)
    lines.status("eval", "fgsm on a")
    lines.progress("eval", 0, 300)
    lines.progress("eval", 37.5, 300)
    lines.status("eval", "pgd on a")
    out = stream.getvalue().splitlines()
    assert out[0] == "eval: fgsm on a" and len(out) == 2, out
    assert re.fullmatch(r"eval: 37/300 images, [\d,.]+ images/s, eta \d+:\d\d:\d\d, elapsed \d+ s, now pgd on a",
                        out[1])


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (links as their targets' bytes), to see that nothing was written."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


CLOBBER = [  # (command line, the output's option, the input's option, the path named): issue 17
    ("gate R.json --rules G.yaml --summary R.json", "--summary R.json", "RESULTS R.json", None),
    ("gate R.json --rules G.yaml --junit G.yaml", "--junit G.yaml", "--rules G.yaml", None),
    ("gate R.json --baseline B.json --summary B.json", "--summary B.json", "--baseline B.json", None),
    ("gate R.csv --rules G.yaml --junit R.csv.meta.json", "--junit R.csv.meta.json", "RESULTS R.csv", None),
    ("eval --out X.csv --per-sample X.csv -q", "--out X.csv", "--per-sample X.csv", "both write to the same file"),
    ("eval --out X.csv --baseline B.json --summary X.csv.meta.json", "--out X.csv", "--summary X.csv.meta.json",
     "both write to the same file"),
    ("eval --baseline B.json --out B.json", "--out B.json", "--baseline B.json", None),
    ("eval --rules G.yaml --junit G.yaml", "--junit G.yaml", "--rules G.yaml", None),
    ("eval ./m.safetensors --baseline B.json --summary m.safetensors", "--summary m.safetensors", "MODEL m.safetensors",
     None),
    ("eval --attacks S.yaml --baseline B.json --junit S.yaml", "--junit S.yaml", "--attacks S.yaml", None),
    ("eval -m zoo:effnet-base --classes C.csv --per-sample C.csv", "--per-sample C.csv", "--classes C.csv", None),
    ("transfer-matrix zoo:effnet-base --attacks S.yaml --out hard.json", "--out hard.json", "--attacks S.yaml",
     "(the same file)"),
    ("leak-check --classes C.md --out C.md", "--out C.md", "--classes C.md", None),
    ("report R.json B.json -o link.md", "-o link.md", "RESULTS R.json", "(the same file)"),
    ("baseline update R.json R.json", "BASELINE R.json", "RESULTS R.json", None),
    ("baseline update R.csv R.csv.meta.json", "BASELINE R.csv.meta.json", "RESULTS R.csv", None),
    ("train --arch net.py:Net --out net.safetensors", "--out net.safetensors", "--arch net.py", "(the same file)"),
    ("train --classes C.safetensors --out C.safetensors", "--out C.safetensors", "--classes C.safetensors", None),
]


@pytest.mark.parametrize(("line", "output", "source", "more"), CLOBBER, ids=[c[0] for c in CLOBBER])
def test_an_output_never_overwrites_an_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line: str,
                                             output: str, source: str, more: str | None) -> None:
    """An output on an input's path, or two outputs on one path, is refused before any work: exit 2, bytes kept."""
    for name, text in {"R.json": "{}", "B.json": "{}", "G.yaml": "rules: []\n", "S.yaml": "attacks: {}\n",
                       "R.csv": "model\n", "R.csv.meta.json": "{}", "m.safetensors": "weights", "C.csv": "a\nb\n",
                       "C.md": "a\n", "C.safetensors": "a\n", "net.py": "Net = None\n"}.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "hard.json").hardlink_to(tmp_path / "S.yaml")
    (tmp_path / "link.md").symlink_to("R.json")
    (tmp_path / "net.safetensors").symlink_to("net.py")
    monkeypatch.chdir(tmp_path)
    before = _files(tmp_path)
    message = one_error_line(invoke(*line.split()), 2, output, source)
    assert more is None or more in message
    assert "would overwrite the input" in message or more == "both write to the same file"
    assert _files(tmp_path) == before


@pytest.mark.parametrize("line", ["eval zoo:effnet-base --data imgs --attack fgsm --plot imgs/0/0.png",
                                  "transfer-matrix zoo:effnet-base --data imgs --attack fgsm --plot imgs/p.png",
                                  "leak-check zoo:effnet-base --data imgs --out imgs/0/r.json"])
def test_no_output_lands_in_the_data_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line: str) -> None:
    """--plot imgs/0/0.png replaced a dataset image with the plot, exit 0: now refused before any work."""
    (tmp_path / "imgs" / "0").mkdir(parents=True)
    (tmp_path / "imgs" / "0" / "0.png").write_bytes(b"not really a png")
    monkeypatch.chdir(tmp_path)
    before = _files(tmp_path)
    output = line.split()[-2] + " " + line.split()[-1]
    message = one_error_line(invoke(*line.split()), 2, output, "is inside the input folder --data imgs")
    assert "outside it" in message and _files(tmp_path) == before


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
@pytest.mark.parametrize("out", ["/proc/x.json", "/proc/x.csv"])
def test_an_output_folder_that_takes_no_new_files_is_refused_before_any_work(out: str) -> None:
    """/proc passes os.access(W_OK) for root, then refused the file after the whole run (exit 3)."""
    result = CliRunner().invoke(main, ["eval", "zoo:effnet-base", "--attack", "fgsm", "--limit", "4", "-q", "--out",
                                       out])
    line = one_error_line(result, 2, f"--out {out}: folder /proc ")
    assert "write the output elsewhere" in line or "is not writable" in line
    assert "eval:" not in result.stderr  # nothing ran: no progress, no probes


def test_a_repeated_eps_option_adds_its_values(tmp_path: Path) -> None:
    """`--eps 8 --eps 4` kept only 4, without a word (click keeps a repeated option's last value)."""
    out = tmp_path / "r.json"
    r = CliRunner().invoke(main, ["eval", "-m", "zoo:effnet-base", "--attack", "fgsm", "--eps", "8", "--eps", "4",
                                  "--limit", "4", "-q", "--no-health", "--out", str(out)])
    assert r.exit_code == 0, r.stderr
    assert sorted({row["eps"] for row in json.loads(out.read_text())["rows"]}) == [0.0, 4.0, 8.0]
    one_error_line(CliRunner().invoke(main, ["leak-check", "--eps", "8", "--eps", "8/255"]), 2, "eps 8 is given twice")

"""`robench eval` end to end with CliRunner: outputs, and one line + exit 2 for every bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from robench import evaluate
from robench.checkpoint import save_checkpoint
from robench.cli.eval_cmd import parse_clean_ref
from robench.cli.main import main
from robench.errors import RobenchError


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def assert_bad_input(result, out: Path, *needles: str) -> None:
    """Exit 2, exactly one line on stderr, no traceback, no output file."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("robench: error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not out.exists()
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_eval_default_model_writes_everything(default_checkpoint: Path, tmp_path: Path) -> None:
    out, samples = tmp_path / "r.json", tmp_path / "s.csv"
    result = invoke("eval", "-m", "zoo:resnet-base", "--limit", "40", "--attack", "fgsm", "--eps", "2,8",
                    "--out", str(out), "--per-sample", str(samples))
    assert result.exit_code == 0, result.stderr
    assert "fgsm" in result.stdout and "eps 8/255" in result.stdout
    doc = json.loads(out.read_text())
    assert {"robench", "schema_version", "command", "config", "versions", "dataset", "models", "rows"} <= set(doc)
    assert doc["command"] == "eval" and doc["dataset"]["n"] == 40 and len(doc["dataset"]["ids"]) == 40
    assert len(doc["dataset"]["ids_sha256"]) == 64 and len(doc["models"][0]["weights_sha256"]) == 64
    rows = {(r["attack"], r["eps"]): r for r in doc["rows"]}
    assert set(rows) == {("clean", 0.0), ("fgsm", 2.0), ("fgsm", 8.0)}
    assert rows[("clean", 0.0)]["success_rate"] is None and all(r["n"] == 40 for r in doc["rows"])
    assert rows[("fgsm", 8.0)]["top1"] < rows[("fgsm", 2.0)]["top1"] < rows[("clean", 0.0)]["top1"]
    frame = pd.read_csv(samples)
    assert len(frame) == 40 * 3 and set(frame["attack"]) == {"clean", "fgsm"}
    clean = frame[frame.attack == "clean"]
    assert clean["top1_correct"].mean() == pytest.approx(rows[("clean", 0.0)]["top1"])


def test_eval_csv_and_md(default_checkpoint: Path, tmp_path: Path) -> None:
    for name in ("r.csv", "r.md"):
        args = ["zoo:resnet-base", "--limit", "10", "--attack", "step_ll", "--eps", "4", "-q", "--out",
                str(tmp_path / name)]
        result = invoke("eval", *args)
        assert result.exit_code == 0, result.stderr
        assert result.stdout == ""
    assert pd.read_csv(tmp_path / "r.csv")["attack"].tolist() == ["clean", "step_ll"]
    assert json.loads((tmp_path / "r.csv.meta.json").read_text())["dataset"]["n"] == 10
    assert "| resnet-base | step_ll | 4 |" in (tmp_path / "r.md").read_text()


def test_checkpoint_alone_and_label(default_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    result = invoke("eval", f"mine={default_checkpoint}", "--limit", "5", "--attack", "fgsm", "--eps", "8/255",
                    "-q", "--out", str(out))
    assert result.exit_code == 0, result.stderr
    doc = json.loads(out.read_text())
    assert doc["models"][0]["label"] == "mine" and doc["models"][0]["arch"] == "test_resnet"
    assert [r["eps"] for r in doc["rows"]] == [0.0, 8.0]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import timm

    root = tmp_path_factory.mktemp("inputs")
    empty = root / "empty"
    (empty / "a").mkdir(parents=True)
    corrupt = root / "corrupt"
    for cls in ("a", "b"):
        (corrupt / cls).mkdir(parents=True)
        Image.new("RGB", (12, 12), (10, 200, 30)).save(corrupt / cls / "ok.png")
    (corrupt / "b" / "bad.png").write_bytes(b"not a png at all")
    bad_yaml = root / "bad.yaml"
    bad_yaml.write_text("eps: [2, 4\nattacks: [\n")
    effnet = root / "effnet.pth"
    torch.save(timm.create_model("test_efficientnet", num_classes=10).state_dict(), effnet)
    five = root / "five.safetensors"
    save_checkpoint(five, timm.create_model("test_resnet", num_classes=5),
                    {"arch": "test_resnet", "num_classes": 5, "input_size": [3, 32, 32]})
    two = root / "two.safetensors"
    save_checkpoint(two, timm.create_model("test_resnet", num_classes=2),
                    {"arch": "test_resnet", "num_classes": 2, "input_size": [3, 32, 32]})
    return {"empty": empty, "corrupt": corrupt, "bad_yaml": bad_yaml, "effnet": effnet, "five": five, "two": two}


BAD_INPUTS = [
    (["-m", "test_resnt"], ["unknown model", "test_resnet"]),
    (["-m", "test_resnet@{effnet}"], ["does not fit test_resnet", "missing keys", "unexpected keys"]),
    (["-m", "test_resnet@{root}/nope.pth"], ["checkpoint not found"]),
    (["--data", "{root}/no-such-folder"], ["dataset folder not found"]),
    (["-m", "{two}", "--data", "{empty}"], ["no images found"]),
    (["-m", "{two}", "--data", "{corrupt}"], ["cannot read image", "bad.png"]),
    (["--attacks", "{bad_yaml}"], ["invalid YAML", "line"]),
    (["--attacks", "{root}/none.yaml"], ["not found"]),
    (["--attack", "fgsmm"], ["unknown attack", "fgsm"]),
    (["--eps", "300"], ["out of range"]),
    (["--eps", "abc"], ["not a number"]),
    (["--eps", "-2"], ["out of range"]),
    (["--limit", "100000"], ["more than the 360 samples"]),
    (["-m", "{five}"], ["5 classes", "10"]),
    (["--bogus-option"], ["No such option"]),
    (["--device", "nonsense"], ["unknown device"]),
]


@pytest.mark.parametrize(("args", "needles"), BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_one_line_exit_2(args, needles, files, default_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    subst = {k: str(v) for k, v in files.items()} | {"root": str(files["empty"].parent)}
    args = [a.format(**subst) for a in args]
    assert_bad_input(invoke("eval", *args, "--limit" if "--limit" not in args else "--seed", "3", "--out", str(out)),
                     out, *needles)


def test_bad_output_suffix(tmp_path: Path) -> None:
    out = tmp_path / "r.txt"
    assert_bad_input(invoke("eval", "--out", str(out)), out, "unknown format")


def test_help_documents_exit_codes() -> None:
    for args in ([], ["eval"]):
        result = invoke(*args, "--help")
        assert result.exit_code == 0
    assert "130" in invoke("--help").stdout and "1/255" in invoke("eval", "--help").stdout


def test_cli_import_is_light_and_not_top_level(tmp_path: Path) -> None:
    code = "import sys, robench.cli.main; print('torch' in sys.modules, 'timm' in sys.modules)"
    light = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert light.stdout.split() == ["False", "False"]
    top = subprocess.run([sys.executable, "-c", "import cli"], capture_output=True, text=True, cwd=tmp_path)
    assert top.returncode != 0 and "No module named 'cli'" in top.stderr


def test_default_run_is_meaningful(tmp_path: Path) -> None:
    """The built-in default (the zoo's baseline and step_ll pair): accurate, and the paper's finding 1."""
    out = tmp_path / "r.json"
    result = invoke("eval", "--attack", "fgsm", "--attack", "step_ll", "-q", "--out", str(out))
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


@pytest.mark.parametrize(("error", "code", "text"), [(KeyboardInterrupt(), 130, "interrupted"),
                                                     (ValueError("boom"), 3, "runtime error: ValueError: boom")])
def test_interrupt_and_runtime_error_codes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, error, code, text) -> None:
    import robench.evaluate

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(robench.evaluate, "run_eval", fail)
    out = tmp_path / "r.json"
    result = invoke("eval", "--out", str(out))
    assert result.exit_code == code
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and text in lines[0] and "Traceback" not in result.stderr
    assert not out.exists()


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
    monkeypatch.setattr(evaluate.engine, "evaluate", lambda *a, **k: pytest.fail("evaluated despite a bad reference"))
    for ref, needle in (("effnet=0.9", "--clean-ref names 'effnet', which is not a model; labels: effnet-base"),
                        ("effnet-base=95", "LABEL=SHARE")):
        r = invoke("eval", "zoo:effnet-base", "--limit", "10", "--clean-ref", ref, "--out", str(tmp_path / "r.json"))
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.exit_code == 2 and len(lines) == 1 and needle in lines[0], r.stderr
    assert not (tmp_path / "r.json").exists()

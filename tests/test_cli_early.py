"""Issue 26 item 11: values robench checks itself are refused before torch is imported, and empty paths never.

A bad value used to cost the 15-45 s of importing torch and timm before its one line; now it
costs what Click's own range errors do. Each case: exit 2, one line naming the option, no torch.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from robench.attacks.suite import load_suite, override
from robench.errors import FieldError
from robench.run.evaluate import EvalConfig
from robench.run.runspec import RunSpec
from robench.run.transfer import TransferConfig
from tests.results_docs import invoke, one_error_line

NO_TORCH = ("import sys, runpy; sys.argv = ['robench', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('robench', run_name='__main__')\n"
            "finally:\n    print('torch imported:', 'torch' in sys.modules, file=sys.stderr)\n")


@pytest.mark.slow
@pytest.mark.parametrize(("args", "needle"), [
    (["eval", "--eps", "0.3"], "--eps"),
    (["eval", "--device", "gpu9"], "--device"),
    (["eval", "--mean", "a"], "--mean"),
    (["eval", "--clean-ref", "x"], "--clean-ref"),
    (["eval", "--plot", "x.txt"], "--plot"),
    (["transfer-matrix", "--eps", "8,,16"], "--eps"),
    (["leak-check", "--eps", "0.5"], "--eps"),
])
def test_bad_values_are_refused_before_torch_is_imported(tmp_path: Path, args: list[str], needle: str) -> None:
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, *args], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and lines[-1] == "torch imported: False", proc.stderr
    assert len(lines) == 2 and lines[0].startswith("robench: error: ") and needle in lines[0], proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [
    ["eval", "-o", ""], ["eval", "--plot", ""], ["eval", "--per-sample", ""], ["eval", "--resume", ""],
    ["eval", "--rules", ""], ["eval", "--baseline", ""], ["eval", "--junit", ""], ["eval", "--classes", ""],
    ["transfer-matrix", "--cache", ""], ["train", "-o", ""], ["gate", ""], ["report", ""],
])
def test_empty_paths_are_refused(args: list[str]) -> None:
    one_error_line(invoke(*args), 2, "an empty path")


@pytest.mark.parametrize("args", [["eval", "--data", ""], ["train", "-o", "m.safetensors", "--data", " "],
                                  ["eval", "--attacks", ""]])
def test_empty_data_and_suite_are_refused(args: list[str]) -> None:
    one_error_line(invoke(*args), 2, args[-2], "an empty value")


def test_device_form_is_checked_by_the_cli() -> None:
    one_error_line(invoke("eval", "--device", "gpu9"), 2, "unknown device 'gpu9' for --device", "cuda:N")
    one_error_line(invoke("train", "-o", "m.safetensors", "--device", "cuda0"), 2, "--device")


@pytest.mark.parametrize(("build", "field"), [
    (lambda: EvalConfig(models="resnet18"), "models"),  # type: ignore[arg-type]
    (lambda: EvalConfig(models=(5,)), "models"),  # type: ignore[arg-type]
    (lambda: TransferConfig(models=("",)), "models"),
    (lambda: RunSpec(data=""), "data"),
    (lambda: RunSpec(device="gpu9"), "device"),
    (lambda: RunSpec(device="cuda:"), "device"),
])
def test_library_configs_refuse_bad_values_at_build(build, field: str) -> None:
    with pytest.raises(FieldError) as caught:
        build()
    assert caught.value.field == field


def test_device_forms_that_are_accepted_at_build() -> None:
    assert [RunSpec(device=d).device for d in ("auto", "cpu", "cuda", "cuda:3", "mps")] == \
        ["auto", "cpu", "cuda", "cuda:3", "mps"]


def test_override_reads_eps_as_the_cli_does() -> None:
    suite = load_suite()
    with pytest.raises(FieldError, match="0.5 is in 1/255 units") as caught:
        override(suite, ("fgsm",), (0.5,))
    assert caught.value.field == "eps"
    assert override(suite, ("fgsm",), ("0.5/255", 8)).attacks[0].eps == (0.5, 8.0)
    assert override(suite, ("fgsm",), ("0.03",), unit="pixel").attacks[0].eps == (pytest.approx(7.65),)

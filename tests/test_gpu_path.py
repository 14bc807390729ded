"""The GPU path on the CPU: channels-last and prefetch change no outcome, the --amp guard, --compile, the boundary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from robench.attacks.suite import parse_suite
from robench.cli.main import main
from robench.errors import FieldError
from robench.models.accel import Accelerated, accelerate, amp_problem, compile_problem
from robench.run.evaluate import EvalConfig, run_eval
from robench.run.runspec import RunSpec

SUITE = parse_suite("eps: [8]\nattacks:\n  - name: fgsm\n  - name: pgd\n    steps: 2\n")  # pgd: random starts too

# Class 1's weight is class 0's times 1 + 2**-10: float32 tells them apart, bfloat16's 8-bit mantissa does not, so
# under bf16 autocast the two logits tie and argmax takes class 0. Every sample of class 1 flips from right to
# wrong, every sample of class 0 from wrong to right: a model whose bf16 outcomes differ from float32 by design.
CLOSE = '''
import torch
from torch import nn

class Close(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.head = nn.Linear(1, num_classes, bias=False)
        with torch.no_grad():
            self.head.weight.fill_(-1.0)
            self.head.weight[0] = 1.0
            self.head.weight[1] = 1.0 + 2.0 ** -10

    def forward(self, x):
        return self.head(x.mean((1, 2, 3))[:, None] + 1.0)
'''


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def close(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("close")
    (root / "close.py").write_text(CLOSE)
    return f"{root / 'close.py'}:Close"


def test_bf16_changes_the_close_model_by_hand() -> None:
    """The premise of the guard test: the model's bf16 top-1 differs from its float32 top-1."""
    namespace: dict[str, object] = {}
    exec(CLOSE, namespace)  # noqa: S102 - the test's own source text above
    model = namespace["Close"]().eval()
    x = torch.full((2, 1, 8, 8), 0.5)
    assert model(x).argmax(1).tolist() == [1, 1]
    assert Accelerated(model, "bf16")(x).argmax(1).tolist() == [0, 0]
    assert Accelerated(model, "bf16")(x).dtype == torch.float32  # logits come out float32 for every loss


def _eval(*args: object) -> tuple[int, str, str]:
    result = invoke("eval", *args)
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.slow
def test_amp_guard_stops_when_outcomes_change(close: str, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    code, _, err = _eval("-m", close, "--attack", "fgsm", "--eps", "8", "--limit", "40", "--no-health", "-q",
                         "--amp", "bf16", "-o", out)
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert "--amp bf16 changed the outcome of" in line and "--amp-accept-changes" in line
    assert "Traceback" not in err and not out.exists()
    changed = int(line.split("changed the outcome of ")[1].split()[0])
    assert 0 < changed <= 40


def test_amp_accept_changes_runs_and_records(close: str, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    code, _, err = _eval("-m", close, "--attack", "fgsm", "--eps", "8", "--limit", "40", "--no-health", "-q",
                         "--amp", "bf16", "--amp-accept-changes", "-o", out)
    assert code == 0, err
    assert "--amp-accept-changes" in err  # the user sees the count again, as a warning
    precision = json.loads(out.read_text())["precision"]
    check = precision["amp_check"]
    assert precision["amp"] == "bf16" and check["accepted"] and check["samples"] == 40
    assert 0 < check["samples_changed"] <= check["samples"] and check["changed"] >= check["samples_changed"]


def test_amp_rows_are_the_bf16_numbers(close: str) -> None:
    """With the change accepted the rows are what bf16 gives: clean top-1 is the share of class 0, not class 1."""
    run = RunSpec(suite=SUITE, limit=40, health_probes=False, amp="bf16", amp_accept_changes=True)
    amp = run_eval(EvalConfig((close,), run, worst=False))
    exact = run_eval(EvalConfig((close,), RunSpec(suite=SUITE, limit=40, health_probes=False), worst=False))
    assert amp is not None and exact is not None
    labels = exact.outcomes["Close"].labels
    clean = lambda r: float(r.rows.query("attack == 'clean'").top1.iloc[0])  # noqa: E731
    assert clean(exact) == pytest.approx(np.mean(labels == 1)) and clean(amp) == pytest.approx(np.mean(labels == 0))
    assert "precision" in exact.meta and exact.meta["precision"]["amp"] is None


def test_fp16_on_the_cpu_refused_before_any_work(tmp_path: Path) -> None:
    code, out, err = _eval("--limit", "5", "--attack", "fgsm", "--amp", "fp16", "--device", "cpu", "-q")
    assert code == 2 and err.strip() == ("robench: error: --amp fp16 cannot run on cpu: float16 autocast needs a "
                                         "CUDA device; on the CPU use bf16")
    assert out == ""


def test_library_names_the_field() -> None:
    with pytest.raises(FieldError, match="^amp fp16 cannot run on cpu"):
        run_eval(EvalConfig(run=RunSpec(limit=5, device="cpu", amp="fp16")))
    with pytest.raises(FieldError, match="amp must"):
        RunSpec(amp="fp8")
    assert amp_problem("bf16", torch.device("cpu")) is None and amp_problem(None, torch.device("meta")) is None
    assert "cpu" in str(amp_problem("bf16", torch.device("meta")))


def test_compile_refused_without_a_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert "C++ compiler" in str(compile_problem(torch.device("cpu")))
    code, out, err = _eval("--limit", "5", "--attack", "fgsm", "--compile", "--device", "cpu", "-q")
    assert code == 2 and err.strip().startswith("robench: error: --compile cannot run on cpu:") and out == ""
    assert len(err.strip().splitlines()) == 1


def test_compile_refused_on_a_torch_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(torch, "compile")
    assert "torch.compile" in str(compile_problem(torch.device("cpu")))


def test_nothing_asked_is_the_model_itself() -> None:
    model = nn.Linear(2, 2)
    assert accelerate(model) is model


def _outcomes(**run: object) -> dict[str, np.ndarray]:
    result = run_eval(EvalConfig(run=RunSpec(suite=SUITE, limit=30, batch_size=16, health_probes=False, **run)))
    assert result is not None
    return {label: np.stack([o.pred, o.top5.astype(np.int32)]) for label, o in result.outcomes.items()}


@pytest.mark.slow
def test_channels_last_gives_the_same_outcomes_on_the_cpu() -> None:
    plain, last = _outcomes(), _outcomes(channels_last=True)
    assert plain.keys() == last.keys()
    for label in plain:
        np.testing.assert_array_equal(plain[label], last[label])


def test_channels_last_is_off_on_the_cpu_by_default(close: str) -> None:
    result = run_eval(EvalConfig((close,), RunSpec(suite=SUITE, limit=4, health_probes=False)))
    assert result is not None and result.meta["precision"] == {"amp": None, "compile": False, "channels_last": False}


@pytest.mark.reference
@pytest.mark.slow
def test_compile_on_the_cpu_gives_the_same_outcomes_and_is_recorded() -> None:
    if compile_problem(torch.device("cpu")):
        pytest.skip(str(compile_problem(torch.device("cpu"))))
    result = run_eval(EvalConfig(run=RunSpec(suite=SUITE, limit=8, health_probes=False, compile=True)))
    assert result is not None and result.meta["precision"]["compile"] is True


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 30 digits images as PNG class folders (all ten classes), for a loader with workers."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits, root = load_digits(), tmp_path_factory.mktemp("digit_folder")
    for i in range(30):
        path = root / str(digits.target[i]) / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((digits.images[i] * 255 / 16).astype("uint8")).save(path)
    return root


@pytest.mark.slow
def test_loader_prefetch_gives_the_same_outcomes(digit_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers decoding ahead (prefetch_factor 4) give the outcomes of the main process decoding each batch."""
    from robench.data import images

    seen: list[dict[str, object]] = []
    loader = torch.utils.data.DataLoader

    def recording(*args: object, **kwargs: object) -> object:
        seen.append(kwargs)
        return loader(*args, **kwargs)

    monkeypatch.setattr(torch.utils.data, "DataLoader", recording)
    plain = _outcomes(data=str(digit_folder), workers=0)
    ahead = _outcomes(data=str(digit_folder), workers=2)
    assert {k["prefetch_factor"] for k in seen if k["num_workers"]} == {images.PREFETCH}
    assert not any(k["pin_memory"] for k in seen)  # pinned memory only for a CUDA device
    for label in plain:
        np.testing.assert_array_equal(plain[label], ahead[label])

"""Faults: out-of-memory retries, NaN/inf logits, unreadable images, kill-and-resume, Ctrl-C, foreign state."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from held_child import held_child, same_results, state_records
from PIL import Image
from results_docs import one_error_line
from torch import nn

from robench import engine
from robench.attacks.suite import parse_suite
from robench.cli.main import main
from robench.data import InputConfig, load_digits_source
from robench.engine.resume import RunState
from robench.errors import RobenchError
from robench.results.provenance import resume_versions

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
ZOO_INPUT = InputConfig(size=(32, 32))  # the zoo's input, as its models were trained
SUITE = parse_suite("eps: [8]\nattacks:\n  - name: fgsm\n  - name: pgd\n    steps: 2\n")


class OomAbove(nn.Module):
    """Raises CUDA's out-of-memory error for batches larger than ``limit``; counts the sizes it saw."""

    def __init__(self, model: nn.Module, limit: int) -> None:
        super().__init__()
        self.model, self.limit, self.sizes = model, limit, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(x))
        if len(x) > self.limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {len(x)} MiB")
        return self.model(x)


class InfWhenBright(nn.Module):
    """The model's logits, with +inf for every input brighter than 0.31 on average: a numerically broken model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        return torch.where((x.flatten(1).mean(1) > 0.31)[:, None], torch.full_like(logits, float("inf")), logits)


def _run(model: nn.Module, batch_size: int, warn=None) -> engine.Outcomes:
    source = load_digits_source(limit=80)
    return engine.evaluate(model, source.batches(ZOO_INPUT, batch_size), source.ids, SUITE, 0, warn)


def _same(a: engine.Outcomes, b: engine.Outcomes) -> None:
    assert a.ids == b.ids and a.settings == b.settings
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.pred, b.pred)
    np.testing.assert_array_equal(a.top5, b.top5)
    np.testing.assert_array_equal(a.least_likely, b.least_likely)


# --- out of memory ---------------------------------------------------------------------------------


def test_out_of_memory_halves_the_batch_and_changes_nothing(trained) -> None:
    plain = _run(trained.module, 40)
    warnings: list[str] = []
    oom = OomAbove(trained.module, limit=12)
    fitted = _run(oom, 40, warnings.append)
    _same(fitted, plain)
    # 40 -> 20 -> 10 on the first batch; the second batch starts at 10 and never fails
    assert warnings == ["out of memory on a batch of 40; retrying with batch size 20",
                        "out of memory on a batch of 20; retrying with batch size 10"]
    assert max(s for s in oom.sizes[2:]) == 10 and oom.sizes[:2] == [40, 20]


class OomOnce(nn.Module):
    """Raises CUDA's out-of-memory error once, at forward call ``at`` (0-based), if its batch is over ``limit``."""

    def __init__(self, model: nn.Module, at: int, limit: int) -> None:
        super().__init__()
        self.model, self.at, self.limit, self.calls = model, at, limit, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls - 1 == self.at and len(x) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return self.model(x)


def test_progress_of_a_piece_retried_after_out_of_memory_counts_again(trained) -> None:
    """OOM in pgd (after fgsm's 2 of the 6 planned passes per sample): the halves count from the batch's start.

    Per half: fgsm's end at 2 of 6, pgd's second step at 4 of 6 (its first gradient spent), its end at 6.
    """
    source = load_digits_source(limit=40)
    plan = engine.Plan.white_box([engine.Participant("m", OomOnce(trained.module, at=3, limit=20), ZOO_INPUT)])
    done: list[float] = []
    hooks = engine.Hooks(progress=lambda what, d, total: done.append(d))
    out = engine.Matrix.empty(source.ids, engine.settings_of(SUITE), plan.pairs())
    engine.run_batches(plan, ({ZOO_INPUT: b} for b in source.batches(ZOO_INPUT, 40)), SUITE, out, 0, hooks)
    # calls: clean, fgsm gradient, fgsm score, then pgd's first step fails at 40
    assert done == pytest.approx([0, 40 / 3, 20 / 3, 40 / 3, 20, 20 + 20 / 3, 20 + 40 / 3, 40])


def test_out_of_memory_at_batch_size_1_and_other_errors_are_raised(trained) -> None:
    with pytest.raises(torch.cuda.OutOfMemoryError):
        _run(OomAbove(trained.module, limit=0), 4)

    class Broken(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):  # not retried: the first call fails
        _run(Broken(1, 1), 4)


def test_is_out_of_memory() -> None:
    assert engine.is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert engine.is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried 9 GB"))
    assert not engine.is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not engine.is_out_of_memory(ValueError("out of memory"))


# --- NaN / inf logits ------------------------------------------------------------------------------


def test_nonfinite_logits_count_as_wrong_and_are_reported(trained) -> None:
    source = load_digits_source(limit=80)
    broken = _run(InfWhenBright(trained.module), 40)
    bright = torch.cat([b.images.flatten(1).mean(1) > 0.31 for b in source.batches(ZOO_INPUT, 40)]).numpy()
    clean_bad = broken.pred[0] == engine.NONFINITE
    np.testing.assert_array_equal(clean_bad, bright)  # exactly the inf rows
    assert clean_bad.any() and not clean_bad.all()
    assert not broken.top5[0][clean_bad].any()  # never a top-5 hit either
    plain = _run(trained.module, 40)
    np.testing.assert_array_equal(broken.pred[0][~clean_bad], plain.pred[0][~clean_bad])
    warnings = engine.Matrix(broken.ids, broken.settings, {("broken", "broken"): broken}).nonfinite_lines()
    assert len(warnings) == 1 and warnings[0].startswith("model 'broken' gave NaN or inf logits (clean: ")
    assert f"clean: {int(clean_bad.sum())}" in warnings[0] and warnings[0].endswith("they count as wrong")


# --- unreadable images -----------------------------------------------------------------------------


def _folder(root: Path) -> Path:
    gen = np.random.default_rng(0)
    for c in range(10):
        (root / str(c)).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(gen.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / str(c) / f"{i}.png")
    (root / "3" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))  # a PNG header, then garbage
    return root


def test_corrupt_png_fails_with_its_name_and_writes_nothing(tmp_path: Path) -> None:
    root, out = _folder(tmp_path / "imgs"), tmp_path / "r.json"
    res = CliRunner().invoke(main, ["eval", "zoo:resnet-base", "--data", str(root), "--attack", "fgsm", "--eps", "8",
                                    "-q", "--out", str(out)])
    assert res.exit_code == 2
    said = [ln for ln in res.stderr.strip().splitlines() if "was trained on digits" not in ln]  # a folder, not digits
    assert said == [
        f"robench: error: cannot read image {root / '3' / '1.png'}: corrupt or not an image; remove or replace it, "
        "or pass --skip-bad-images to leave it out (it is recorded)"]
    assert not out.exists()


@pytest.mark.parametrize("command", ["eval", "transfer-matrix"])
def test_corrupt_png_skipped_with_the_flag_and_recorded(tmp_path: Path, command: str) -> None:
    root, out = _folder(tmp_path / "imgs"), tmp_path / "r.json"
    res = CliRunner().invoke(main, [command, "zoo:resnet-base", "--data", str(root), "--attack", "fgsm", "--eps", "8",
                                    "-q", "--skip-bad-images", "--no-health", "--out", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert doc["dataset"]["skipped"] == [{"id": "3/1.png", "file": str(root / "3" / "1.png")}]
    assert doc["dataset"]["n"] == 19 and "3/1.png" not in doc["dataset"]["ids"]
    assert {r["n"] for r in doc["rows"]} == {19}  # counted nowhere


# --- resume ----------------------------------------------------------------------------------------

RESUME_SUITE = Path(__file__).parent / "data" / "resume_attacks.yaml"  # fgsm and a 3-step pgd, eps 8
RESUME_ARGS = ["eval", "zoo:effnet-base", "--limit", "120", "--batch-size", "10", "--attacks", str(RESUME_SUITE),
               "-q", "--no-health"]
BATCHES = 12


PAUSED = Path(__file__).parent / "paused_run.py"  # robench, stopped after its k-th finished batch


def _paused(args: list[str], k: int, timeout: float = 180) -> contextlib.AbstractContextManager[subprocess.Popen]:
    """``robench ARGS`` in a child that has kept exactly ``k`` batches and waits, blocked, for the test's signal."""
    return held_child(PAUSED, args, k, f"{k} batches kept", ENV, timeout)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("clean") / "r.json"
    res = CliRunner().invoke(main, [*RESUME_ARGS, "--out", str(out)])
    assert res.exit_code == 0, res.output
    return json.loads(out.read_text())


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_results(tmp_path: Path, uninterrupted: dict) -> None:
    state, out = tmp_path / "state", tmp_path / "r.json"
    args = [*RESUME_ARGS, "--resume", str(state), "--out", str(out)]
    with _paused(args, 2) as proc:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    assert len(state_records(state)) == 2 < BATCHES  # killed with two batches kept and more to do
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    # only the unfinished batches were computed: one record each, none twice
    records = state_records(state)
    assert len(records) == BATCHES
    rows = np.concatenate([np.frombuffer(base64.b64decode(r["part"]["rows"]["data"]), dtype=np.int64)
                           for r in records])
    assert sorted(rows.tolist()) == list(range(120))
    doc = same_results(out, uninterrupted)
    assert doc["config"] == {**uninterrupted["config"], "resume": str(state)}


@pytest.mark.slow
def test_ctrl_c_keeps_the_state_and_exits_130(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with _paused([*RESUME_ARGS, "--resume", str(state)], 1) as proc:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == (
        f"robench: error: interrupted; finished batches are kept in {state}: run the same command to go on")
    assert len(state_records(state)) == 1 < BATCHES


@pytest.mark.slow
def test_sigterm_keeps_the_state_exits_143_and_the_rerun_finishes(tmp_path: Path, uninterrupted: dict) -> None:
    # SLURM and Kubernetes send SIGTERM before they kill: it stops like Ctrl-C, with the scheduler's exit code
    state, out = tmp_path / "state", tmp_path / "r.json"
    args = [*RESUME_ARGS, "--resume", str(state), "--out", str(out)]
    with _paused(args, 1) as proc:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and not out.exists()
    assert err.strip().splitlines() == [
        f"robench: error: terminated (SIGTERM); finished batches are kept in {state}: run the same command to go on"]
    assert len(state_records(state)) == 1 < BATCHES
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    same_results(out, uninterrupted)


def test_sigterm_handler_is_the_cli_s_only_while_a_command_runs() -> None:
    before = signal.getsignal(signal.SIGTERM)
    seen = []

    @main.command("peek-sigterm")
    def peek() -> None:
        seen.append(signal.getsignal(signal.SIGTERM))

    try:
        assert CliRunner().invoke(main, ["peek-sigterm"]).exit_code == 0
    finally:
        main.commands.pop("peek-sigterm")
    assert seen[0] not in (before, signal.SIG_DFL) and signal.getsignal(signal.SIGTERM) is before


def test_state_of_another_run_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    RunState(state, "0" * 64, versions=resume_versions()).append({"rows": np.arange(2), "pairs": {}})
    res = CliRunner().invoke(main, [*RESUME_ARGS, "--resume", str(state), "--out", str(tmp_path / "r.json")])
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines() == [
        f"robench: error: --resume {state} holds the state of a different run (other models, preprocessing, data, "
        "attacks, cascade/early_stop or seed); rerun that exact command, or give a new --resume folder"]
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("change", [["--cascade"], ["--mean", "0.4"]])
def test_a_changed_run_does_not_resume_the_first(tmp_path: Path, change: list[str]) -> None:
    # cascade and early stopping change the outcomes, and so does the preprocessing: their states are other runs
    state, args = tmp_path / "state", ["eval", "zoo:resnet-base", "--limit", "10", "--attacks", "quick", "--eps", "8",
                                       "-q", "--no-health"]
    assert CliRunner().invoke(main, [*args, "--resume", str(state)]).exit_code == 0
    res = CliRunner().invoke(main, [*args, *change, "--resume", str(state), "--out", str(tmp_path / "r.json")])
    assert res.exit_code == 2 and "holds the state of a different run" in res.stderr
    assert not (tmp_path / "r.json").exists()


def test_torn_last_line_is_ignored_and_ended(tmp_path: Path) -> None:
    state = RunState(tmp_path, "k")
    state.append({"rows": np.arange(3), "pairs": {}})
    state.close()
    path = tmp_path / "state-rank0.jsonl"
    path.write_text(path.read_text() + '{"part": {"rows"')  # killed mid-write
    assert [p["rows"].tolist() for p in RunState(tmp_path, "k").load()] == [[0, 1, 2]]
    again = RunState(tmp_path, "k")
    again.check()
    again.append({"rows": np.arange(3, 5), "pairs": {}})
    again.close()
    assert [p["rows"].tolist() for p in RunState(tmp_path, "k").load()] == [[0, 1, 2], [3, 4]]


SMALL_RESUME = ["eval", "zoo:resnet-base", "--limit", "10", "--batch-size", "5", "--attacks", "quick", "--eps", "8",
                "-q", "--no-health"]


def test_state_of_another_robench_version_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Attacks may change between versions: a resumed run would mix two versions' results."""
    from robench import __version__
    from robench.results import provenance

    state, out = tmp_path / "state", tmp_path / "r.json"
    monkeypatch.setattr(provenance, "__version__", "0.0.1")
    assert CliRunner().invoke(main, [*SMALL_RESUME, "--resume", str(state)]).exit_code == 0
    monkeypatch.undo()
    res = CliRunner().invoke(main, [*SMALL_RESUME, "--resume", str(state), "--out", str(out)])
    one_error_line(res, 2, f"--resume {state} was written by robench 0.0.1; this is robench {__version__}, and the "
                   "two would mix results of different code: remove the folder, give a new --resume folder, or "
                   "resume with the versions that wrote it")
    assert not out.exists()


def test_versions_that_differ_are_named(tmp_path: Path) -> None:
    written = {"robench": "0.1.0", "torch": "2.4.0", "timm": "1.0.9"}
    RunState(tmp_path, "k", versions=written).append({"rows": np.arange(2), "pairs": {}})
    with pytest.raises(RobenchError, match=r"was written by torch 2\.4\.0, timm 1\.0\.9; this is torch 2\.5\.1, "
                                           r"timm 1\.0\.12, and the two would mix"):
        RunState(tmp_path, "k", versions={**written, "torch": "2.5.1", "timm": "1.0.12"}).check()
    RunState(tmp_path, "k", versions=written).check()  # the same versions resume
    (tmp_path / "state-rank0.jsonl").write_text('{"fingerprint": "k"}\n')  # a state of robench before versions
    with pytest.raises(RobenchError, match="was written by an earlier robench, which did not record its versions; "
                                           "this is robench 0.1.0, torch 2.4.0, timm 1.0.9"):
        RunState(tmp_path, "k", versions=written).check()


@pytest.mark.parametrize("content", [b"", b'{"fingerprint": "3f2a'], ids=["empty", "torn header"])
def test_a_state_file_without_its_header_starts_over(tmp_path: Path, content: bytes) -> None:
    """A full disk or a kill before the first flush leaves such a file; it held nothing, so nothing is lost."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "state-rank0.jsonl").write_bytes(content)
    first = CliRunner().invoke(main, [*SMALL_RESUME, "--resume", str(state), "--out", str(tmp_path / "a.json")])
    assert first.exit_code == 0, first.output
    header = json.loads((state / "state-rank0.jsonl").read_text().splitlines()[0])
    assert header["versions"] == resume_versions() and len(state_records(state)) == 2
    again = CliRunner().invoke(main, [*SMALL_RESUME, "--resume", str(state), "--out", str(tmp_path / "b.json")])
    assert again.exit_code == 0, again.output
    rows = np.concatenate([np.frombuffer(base64.b64decode(r["part"]["rows"]["data"]), dtype=np.int64)
                           for r in state_records(state)])
    assert sorted(rows.tolist()) == list(range(10))  # resumed: no sample computed again
    rows = [json.loads((tmp_path / f).read_text())["rows"] for f in ("a.json", "b.json")]
    assert rows[0] == rows[1]


TWIN_ARGS = ["zoo:resnet-base", "--attack", "fgsm", "--eps", "8", "--batch-size", "8", "-q", "--no-health"]


def test_a_state_of_other_images_under_the_same_names_is_computed_again(
        tmp_path: Path, twin_folders: tuple[Path, Path]) -> None:
    """Folder B holds A's file names with other pixels: resuming A's state on B gives B's own numbers."""
    a, b = twin_folders
    state = tmp_path / "state"
    docs = {}
    for name, data, resume in (("a", a, True), ("b", b, True), ("b_fresh", b, False), ("b_again", b, True)):
        out = tmp_path / f"{name}.json"
        res = CliRunner().invoke(main, ["eval", *TWIN_ARGS, "--data", str(data), "--out", str(out),
                                        *(["--resume", str(state)] if resume else [])])
        assert res.exit_code == 0, res.output
        docs[name] = (json.loads(out.read_text()), res.stderr)
    rows = {name: doc["rows"] for name, (doc, _) in docs.items()}
    assert rows["b"] == rows["b_fresh"] != rows["a"]
    assert "20 samples of the resume state hold other content than the data now" in docs["b"][1]
    assert "other content" not in docs["b_again"][1]  # B's own state is B's: resumed, nothing computed
    assert rows["b_again"] == rows["b"] and docs["b_again"][0]["cost"][0]["backward_passes"] == 0
    content = {name: doc["dataset"]["content_sha256"] for name, (doc, _) in docs.items()}
    assert content["a"] != content["b"] == content["b_fresh"] == content["b_again"]
    assert docs["a"][0]["dataset"]["ids_sha256"] == docs["b"][0]["dataset"]["ids_sha256"]


def _with_input(source: Path, path: Path, **changes: object) -> Path:
    """A copy of a robench checkpoint with the same weights and other preprocessing metadata."""
    from safetensors.torch import load_file, save_file

    from robench.models.checkpoint import META_KEY, read_metadata

    meta = {**read_metadata(source), **changes}
    save_file(load_file(str(source)), str(path), metadata={META_KEY: json.dumps(meta, sort_keys=True)})
    return path


@pytest.mark.parametrize("change", [{"mean": [0.4] * 3}, {"std": [0.2] * 3}, {"input_size": [1, 28, 28]},
                                    {"crop_pct": 0.875}, {"interpolation": "bicubic"}, {"crop_mode": "squash"}],
                         ids=lambda c: next(iter(c)))
def test_same_weights_other_preprocessing_is_another_function(
        tmp_path: Path, default_checkpoint: Path, change: dict) -> None:
    """Resume states and the example cache key on LoadedModel.function(): it covers the preprocessing."""
    from robench.models import load_model, parse_spec

    same = _with_input(default_checkpoint, tmp_path / "same.safetensors")
    other = _with_input(default_checkpoint, tmp_path / "other.safetensors", **change)
    first, again, changed = (load_model(parse_spec(str(p)), num_classes=10) for p in (same, same, other))
    assert first.weights_sha256 == changed.weights_sha256
    assert first.function() == again.function() != changed.function()


def test_a_checkpoint_differing_only_in_mean_std_does_not_resume_the_other(
        tmp_path: Path, default_checkpoint: Path) -> None:
    plain = _with_input(default_checkpoint, tmp_path / "plain.safetensors")
    shifted = _with_input(default_checkpoint, tmp_path / "shifted.safetensors", mean=[0.4], std=[0.3])
    state, args = tmp_path / "state", ["--limit", "10", "--attack", "fgsm", "--eps", "8", "-q", "--no-health"]
    assert CliRunner().invoke(main, ["eval", str(plain), *args, "--resume", str(state)]).exit_code == 0
    res = CliRunner().invoke(main, ["eval", str(shifted), *args, "--resume", str(state),
                                    "--out", str(tmp_path / "r.json")])
    one_error_line(res, 2, "holds the state of a different run (other models, preprocessing")
    assert not (tmp_path / "r.json").exists()

"""Engine, metrics and report: pass counts, batch independence, exact metric values, atomic files."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import stat
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from robench import engine
from robench.analysis import metrics
from robench.attacks.single_step import FgsmConfig
from robench.attacks.suite import AttackSpec, Suite, load_suite, override
from robench.core import files, outputs, text
from robench.data import InputConfig, TensorSource
from robench.errors import RobenchError
from robench.results import write


def _source(n: int = 20, size: int = 8, seed: int = 0) -> TensorSource:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=g)
    labels = torch.randint(0, 5, (n,), generator=g)
    return TensorSource("random", images, labels, [f"r:{i}" for i in range(n)], 5, scale=1.0)


class Counting(nn.Module):
    """Counts forward calls of the wrapped model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.model(x)


def test_clean_forward_once_and_one_gradient_for_all_eps(small_cnn: nn.Module) -> None:
    suite = Suite((AttackSpec("fgsm", "fgsm", (2.0, 4.0, 8.0, 16.0), FgsmConfig()),))
    model, src = Counting(small_cnn), _source(20)
    engine.evaluate(model, src.batches(InputConfig(size=(8, 8)), 10), src.ids, suite)
    # per batch: 1 clean forward + 1 gradient forward + 4 scoring forwards; 2 batches
    assert model.calls == 2 * (1 + 1 + 4)


def _reported(model: nn.Module, suite: Suite, n: int, batch_size: int) -> tuple[list, list]:
    """The (what, done, total) progress reports and (what, stage) status reports of a white-box run."""
    src, cfg = _source(n), InputConfig(size=(8, 8))
    plan = engine.Plan.white_box([engine.Participant("m", model, cfg)])
    progress, status = [], []
    hooks = engine.Hooks(progress=lambda *a: progress.append(a), status=lambda *a: status.append(a), what="eval")
    out = engine.Matrix.empty(src.ids, engine.settings_of(suite), plan.pairs())
    engine.run_batches(plan, ({cfg: b} for b in src.batches(cfg, batch_size)), suite, out, 0, hooks)
    return progress, status


def test_progress_moves_with_each_attacks_passes(small_cnn: nn.Module) -> None:
    """A batch under every attack can take minutes: images done move with the passes spent against the plan.

    Per sample: fgsm 2 passes, bim at eps 8 10 gradients (20), pgd 10 (20), step_ll 2: 44 in all. An
    attack's end is its share of the 44; pgd reports its passes at each of its steps but the first.
    """
    suite = override(load_suite(), ("fgsm", "bim", "pgd", "step_ll"), (8.0,))
    progress, status = _reported(small_cnn, suite, 20, 10)
    done = [d for _, d, _ in progress]
    assert done == sorted(done) and done[0] == 0 and done[-1] == 20 and {(w, t) for w, _, t in progress} == {
        ("eval", 20)}
    for batch in (0, 10):
        for spent in (2, 22, 42, 44):  # the ends of fgsm, bim, pgd, step_ll
            assert any(d == pytest.approx(batch + 10 * spent / 44) for d in done)
    assert len(done) == 2 * (4 + 9 + 9) + 1  # per batch: 4 attack ends, 9 steps of bim and of pgd; the start
    stages = [t for _, t in status if ":" not in t]
    assert stages == [f"{a} on m" for a in ("fgsm", "bim", "pgd", "step_ll")] * 2
    assert [t for _, t in status if t.startswith("pgd on m:")][:9] == [
        f"pgd on m: {20 * i}/200 passes" for i in range(1, 10)]  # 10 samples, 2 passes each per step


def test_progress_under_cascade_credits_an_attacks_whole_plan(small_cnn: nn.Module) -> None:
    """pgd runs on fgsm's survivors only: it spends less than planned, and its end still counts the batch done."""
    suite = dataclasses.replace(override(load_suite(), ("fgsm", "pgd"), (8.0,)), cascade=True)
    progress, status = _reported(small_cnn, suite, 10, 10)
    done = [d for _, d, _ in progress]
    assert done[:2] == [0, pytest.approx(10 * 2 / 22)] and done[-1] == 10 and done == sorted(done)
    assert [t for _, t in status if ":" not in t] == ["fgsm on m", "pgd on m"]


def test_batch_size_does_not_change_outcomes(small_cnn: nn.Module) -> None:
    suite = override(load_suite(), ("fgsm", "step_ll", "bim", "iter_ll"), (2.0, 8.0))
    src, cfg = _source(24), InputConfig(size=(8, 8))
    a = engine.evaluate(small_cnn, src.batches(cfg, 24), src.ids, suite)
    b = engine.evaluate(small_cnn, src.batches(cfg, 5), src.ids, suite)
    assert np.array_equal(a.pred, b.pred) and np.array_equal(a.top5, b.top5)
    assert a.settings[0] == ("clean", 0.0) and len(a.settings) == 1 + 4 * 2


def test_evaluate_restores_model_state(small_cnn: nn.Module) -> None:
    small_cnn.train()
    before = {k: v.clone() for k, v in small_cnn.state_dict().items()}
    src = _source(6)
    engine.evaluate(small_cnn, src.batches(InputConfig(size=(8, 8)), 6), src.ids, load_suite())
    assert all(m.training for m in small_cnn.modules())
    assert all(p.requires_grad and p.grad is None for p in small_cnn.parameters())
    assert all(torch.equal(before[k], v) for k, v in small_cnn.state_dict().items())


def _outcomes() -> engine.Outcomes:
    out = engine.Outcomes.empty(["a", "b", "c", "d"], [("clean", 0.0), ("fgsm", 8.0)])
    out.labels[:] = [0, 1, 2, 3]
    out.pred[0] = [0, 1, 2, 0]  # 3 of 4 correct when clean
    out.pred[1] = [0, 0, 1, 3]  # sample d flips to correct; a stays; b, c fooled
    out.top5[0] = [True, True, True, True]
    out.top5[1] = [True, False, True, True]
    return out


def test_summarize_exact_values() -> None:
    rows = metrics.summarize(_outcomes(), "m")
    assert list(rows.columns) == metrics.ROW_COLUMNS
    clean, fgsm = rows.iloc[0], rows.iloc[1]
    assert (clean.attack, clean.eps, clean.top1, clean.top5, clean.n) == ("clean", 0.0, 0.75, 1.0, 4)
    assert math.isnan(clean.success_rate)
    # success among the 3 clean-correct samples (a, b, c): b and c fooled -> 2/3
    assert (fgsm.top1, fgsm.top5, fgsm.success_rate) == (0.5, 0.75, pytest.approx(2 / 3))


def test_success_rate_is_nan_without_clean_correct_samples() -> None:
    assert math.isnan(metrics.success_rate(np.array([1, 1]), np.array([0, 0]), np.array([0, 0])))


def test_per_sample_is_tidy() -> None:
    frame = metrics.per_sample(_outcomes(), "m")
    assert len(frame) == 8
    row = frame[(frame.id == "d") & (frame.attack == "fgsm")].iloc[0]
    assert (row.label, row.pred, bool(row.top1_correct), row.eps) == (3, 3, True, 8.0)


def test_markdown_is_exact() -> None:
    frame = pd.DataFrame({"model": ["m"], "eps": [2.0], "top1": [0.5], "success_rate": [float("nan")]})
    expected = "| model | eps | top1 | success_rate |\n|---|---|---|---|\n| m | 2 | 0.5000 |  |\n"
    assert text.to_markdown(frame) == expected


def _meta() -> dict:
    return {"robench": "0", "schema_version": 1, "command": "eval", "config": {}, "versions": {"torch": "x"},
            "dataset": {"spec": "d", "split": "test", "n": 4, "ids_sha256": "h", "ids": ["a"]},
            "models": [{"label": "m", "spec": "m", "weights_sha256": "w"}], "metrics": {}}


def test_write_results_json_csv_md(tmp_path: Path) -> None:
    rows = metrics.summarize(_outcomes(), "m")
    write.write_results(tmp_path / "r.json", _meta(), rows)
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["rows"][0]["success_rate"] is None and doc["rows"][1]["top1"] == 0.5
    written = write.write_results(tmp_path / "r.csv", _meta(), rows)
    assert written == [tmp_path / "r.csv", tmp_path / "r.csv.meta.json"]
    assert pd.read_csv(tmp_path / "r.csv")["top1"].tolist() == [0.75, 0.5]
    write.write_results(tmp_path / "r.md", _meta(), rows)
    assert "weights sha256 w" in (tmp_path / "r.md").read_text()


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    def boom(p: Path) -> None:
        p.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        files.atomic_write(tmp_path / "out.json", boom)
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_through_a_symlink_replaces_the_target_and_keeps_the_link(tmp_path: Path) -> None:
    target, link = tmp_path / "t.json", tmp_path / "l.json"
    target.write_text("old")
    link.symlink_to(target)
    files.atomic_write_text(link, "new")
    assert link.is_symlink() and os.readlink(link) == str(target) and target.read_text() == "new"
    dangling = tmp_path / "d.json"
    dangling.symlink_to(tmp_path / "made.json")
    files.atomic_write_text(dangling, "made")
    assert dangling.is_symlink() and (tmp_path / "made.json").read_text() == "made"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json", "l.json", "made.json", "t.json"]


def test_atomic_write_into_a_fifo_writes_it_and_leaves_the_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    files.atomic_write_text(fifo, "through the pipe")
    reader.join(10)
    assert got == ["through the pipe"] and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["pipe"]  # no temporary file beside it


def test_outputs_onto_a_folder_or_socket_are_refused(tmp_path: Path) -> None:
    (tmp_path / "d.json").mkdir()
    with pytest.raises(RobenchError, match="is a folder"):
        files.atomic_write_text(tmp_path / "d.json", "x")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tmp_path / "s.json"))
        with pytest.raises(RobenchError, match="^out .*s.json is a socket, not a file"):
            outputs.check_output(tmp_path / "s.json")
        with pytest.raises(RobenchError, match="is a socket"):
            files.atomic_write_text(tmp_path / "s.json", "x")
        assert stat.S_ISSOCK(os.lstat(tmp_path / "s.json").st_mode)


def test_stream_paths_name_their_descriptor(tmp_path: Path) -> None:
    (tmp_path / "err").symlink_to("/dev/stderr")
    found = [files.stream_fd(p) for p in ("-", "/dev/stdout", "/dev/fd/7", "/proc/self/fd/3", tmp_path / "err",
                                          tmp_path / "x.json")]
    assert found == [1, 1, 7, 3, 2, None]
    with pytest.raises(RobenchError, match="^out -: the format comes from the file name's suffix"):
        outputs.check_output(Path("-"))
    outputs.check_output(Path("-"), (".csv",), "per_sample", stdout=True)


@pytest.mark.parametrize("name", ["x.txt", "missing/x.json"])
def test_check_output_rejects_bad_paths(tmp_path: Path, name: str) -> None:
    with pytest.raises(RobenchError):
        outputs.check_output(tmp_path / name)


def test_runs_are_reproducible(small_cnn: nn.Module) -> None:
    src, cfg = _source(12), InputConfig(size=(8, 8))
    suite = override(load_suite(), ("pgd",), (8.0,))
    a = engine.evaluate(small_cnn, src.batches(cfg, 6), src.ids, suite, seed=3)
    b = engine.evaluate(small_cnn, src.batches(cfg, 6), src.ids, suite, seed=3)
    assert np.array_equal(a.pred, b.pred)


def test_pgd_does_not_depend_on_its_place_in_the_suite(small_cnn: nn.Module) -> None:
    src, cfg = _source(12), InputConfig(size=(8, 8))
    alone = engine.evaluate(small_cnn, src.batches(cfg, 6), src.ids, override(load_suite(), ("pgd",), (8.0,)))
    suite = override(load_suite(), ("fgsm", "pgd"), (8.0,))
    after = engine.evaluate(small_cnn, src.batches(cfg, 6), src.ids, suite)
    assert np.array_equal(alone.pred[1], after.pred[2])


def test_a_plan_crossing_input_configs_needs_a_deliver(small_cnn: nn.Module) -> None:
    a = engine.Participant("a", small_cnn, InputConfig(size=(8, 8)))
    b = engine.Participant("b", small_cnn, InputConfig(size=(16, 16)))
    assert engine.Plan.white_box([a, b]).deliver is None  # each model scores itself alone: nothing crosses
    with pytest.raises(ValueError, match="give the plan a deliver"):
        engine.Plan((a, b), {"a": ("a", "b")})


FORMULA = "=cmd|' /C calc'!A0"


def test_csv_text_cells_that_a_spreadsheet_would_run_get_a_quote(tmp_path: Path) -> None:
    """Issue 26 item 8: labels and ids beginning = + - @, tab or return were written raw, and a spreadsheet ran them."""
    from robench.results.read import load_results

    rows = metrics.summarize(_outcomes(), FORMULA)
    meta = _meta() | {"models": [{"label": FORMULA, "spec": "m", "weights_sha256": "w"}]}
    write.write_results(tmp_path / "r.csv", meta, rows)
    raw = pd.read_csv(tmp_path / "r.csv", dtype=str, keep_default_na=False)
    assert set(raw["model"]) == {"'" + FORMULA} and raw["top1"].tolist() == ["0.75", "0.5"]
    assert [r["model"] for r in load_results(tmp_path / "r.csv")["rows"]] == [FORMULA, FORMULA]  # read back as written
    frame = pd.DataFrame({"id": ["+1", "-x.png", "@sum", "\tx", "'q", "ok-=", ""], "model": "m", "eps": -0.5,
                          "label": -3})
    write.write_per_sample(tmp_path / "s.csv", frame)
    raw = pd.read_csv(tmp_path / "s.csv", dtype=str, keep_default_na=False)
    assert raw["id"].tolist() == ["'+1", "'-x.png", "'@sum", "'\tx", "''q", "ok-=", ""]
    assert raw["eps"].tolist() == ["-0.5"] * 7 and raw["label"].tolist() == ["-3"] * 7  # numbers stay numbers
    assert text.csv_text("\ry") == "'\ry" and text.csv_text(-2) == -2
    assert text.csv_text_back(text.csv_text("'=x")) == "'=x"


def test_eval_csv_and_per_sample_quote_a_formula_label(tmp_path: Path) -> None:
    """The same through the CLI: a formula as the -m label, in --out X.csv and --per-sample."""
    from results_docs import invoke

    formula = "+cmd|' -C calc'!A0"  # a label holds no "=", "@" or "/"

    out, per = tmp_path / "r.csv", tmp_path / "s.csv"
    result = invoke("eval", f"{formula}=zoo:effnet-base", "--attack", "fgsm", "--eps", "8", "--limit", "4", "-q",
                    "--out", out, "--per-sample", per)
    assert result.exit_code == 0, result.stderr
    for path in (out, per):
        models = pd.read_csv(path, dtype=str, keep_default_na=False)["model"]
        assert set(models) == {"'" + formula}, path

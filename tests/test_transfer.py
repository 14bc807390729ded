"""transfer-matrix: the transfer-rate definition, the diagonal, the cache, OOM, resolution mismatch, bad input."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from robench.analysis import metrics
from robench.attacks.suite import aimed, load_suite, override, parse_suite
from robench.cli.main import main
from robench.engine import correct
from robench.models.checkpoint import save_checkpoint
from robench.run import runspec
from robench.run.evaluate import EvalConfig, run_eval
from robench.run.runspec import RunSpec
from robench.run.store import dequantize, quantize
from robench.run.transfer import TransferConfig, deliver, run_transfer

SUITE = override(load_suite(), ("fgsm", "iter_ll", "pgd"), (4.0, 16.0))
CHEAP = parse_suite("eps: [8]\nattacks:\n  - name: fgsm\n  - name: pgd\n    steps: 2\n")  # 1 step + iterative


def test_the_three_transfer_definitions_by_hand() -> None:
    """The paper's rate (source prefiltered), the both-clean variant and the unconditional target error differ."""
    labels = np.array([0, 1, 2, 3, 4, 5])
    clean_s = np.array([0, 1, 2, 3, 4, 0])  # sample 5 wrong on the source
    clean_t = np.array([0, 1, 2, 3, 0, 5])  # sample 4 wrong on the target
    adv_s = np.array([9, 9, 9, 3, 9, 9])  # the source is right clean and fooled on 0, 1, 2, 4 (3: not fooled)
    adv_t = np.array([9, 1, 9, 9, 9, 9])  # the target is wrong on 0, 2, 4 of those (and on 3, 5)
    assert metrics.transfer_rates(clean_s, clean_t, adv_s, adv_t, labels) == {
        "transfer_rate": 3 / 4, "n_fooled_source": 4,  # 0, 2, 4 of 0, 1, 2, 4
        "transfer_rate_both_clean": 2 / 3, "n_fooled_source_both_clean": 3,  # 0, 2 of 0, 1, 2 (4: target wrong)
    }
    assert 1 - float(correct(adv_t, labels).mean()) == 5 / 6  # target_error: every sample
    empty = metrics.transfer_rates(clean_s, clean_t, clean_s, adv_t, labels)  # the source is never fooled
    assert math.isnan(empty["transfer_rate"]) and empty["n_fooled_source"] == 0
    assert math.isnan(empty["transfer_rate_both_clean"]) and empty["n_fooled_source_both_clean"] == 0


def test_targeted_success_rate_by_hand() -> None:
    """TransferAttack's definition: of ALL samples, the share the target puts in the class aimed at."""
    adv_t = np.array([3, 1, 2, 0, 4, 4])
    goal = np.array([3, 0, 2, 1, 4, 0])  # hits on samples 0, 2 and 4
    assert metrics.targeted_success_rate(adv_t, goal) == 3 / 6
    assert math.isnan(metrics.targeted_success_rate(adv_t, np.full(6, -1)))  # an untargeted run: no goals
    assert "TransferAttack" in metrics.TRANSFER_DEFINITIONS["targeted_success_rate"]


AIMED = aimed(CHEAP, "random")


def _run_aimed(cache: Path, target_class: str | None, batch_size: int = 12) -> Any:
    suite = CHEAP if target_class is None else AIMED
    run = RunSpec(suite=suite, limit=12, batch_size=batch_size, health_probes=False, target_class=target_class)
    return run_transfer(TransferConfig(PAIR, run=run, cache=cache))


def test_a_targeted_run_aims_every_source_at_one_goal_per_sample(tmp_path: Path) -> None:
    """Random goals never the label, the same for every pair and batch size; the rate recomputed from outcomes;
    least_likely goals are the source's clean argmin; the example store keys on the mode."""
    cache = tmp_path / "cache"
    first = _run_aimed(cache, "random")
    assert first.outcomes.crafted == 2 * 2  # sources x attacks: the store held nothing
    y, goals = first.outcomes.labels, [o.goal for o in first.outcomes.pairs.values()]
    assert not (goals[0] == y).any() and all(np.array_equal(g, goals[0]) for g in goals)
    assert len(set(goals[0].tolist())) > 3  # random, not one class
    rows = first.rows.set_index(["source", "target", "attack", "eps"])
    for (s, t), o in first.outcomes.pairs.items():
        for k, (attack, eps) in enumerate(o.settings[1:], start=1):
            assert rows.loc[(s, t, attack, eps), "targeted_success_rate"] == float((o.pred[k] == o.goal).mean())
    assert first.rows.loc[first.rows.attack == "clean", "targeted_success_rate"].isna().all()
    white = rows.xs("pgd", level="attack")["targeted_success_rate"]
    assert white[("resnet-base", "resnet-base")].item() >= 0.25  # 2 steps of white-box PGD reach many (clean: 0)
    again = _run_aimed(cache, "random", batch_size=5)  # goals drawn anew per batch, examples from the store
    assert again.outcomes.crafted == 0 and again.rows.equals(first.rows)
    for pair, o in first.outcomes.pairs.items():
        np.testing.assert_array_equal(again.outcomes.pairs[pair].goal, o.goal)
    ll = _run_aimed(cache, "least_likely")
    assert ll.outcomes.crafted == 2 * 2  # random's examples are not least_likely's
    for (s, _), o in ll.outcomes.pairs.items():
        np.testing.assert_array_equal(o.goal, ll.outcomes.pairs[(s, s)].least_likely)  # the source's argmin
    assert not np.array_equal(ll.outcomes.pairs[PAIR_LABELS].goal, goals[0])
    plain = _run_aimed(cache, None)
    assert plain.outcomes.crafted == 2 * 2 and plain.rows["targeted_success_rate"].isna().all()
    assert (plain.outcomes.pairs[PAIR_LABELS].goal == -1).all()


@pytest.mark.slow
def test_diagonal_equals_eval() -> None:
    run = RunSpec(suite=SUITE, limit=30, batch_size=16)
    transfer = run_transfer(TransferConfig(("zoo:resnet-base",), run=run))
    evaluated = run_eval(EvalConfig(("zoo:resnet-base",), run))
    diagonal = transfer.rows.set_index(["attack", "eps"])["target_top1"]
    white = evaluated.rows[evaluated.rows["attack"] != "worst"]  # transfer-matrix has no worst-case rows
    assert white.set_index(["attack", "eps"])["top1"].to_dict() == diagonal.to_dict()
    out = evaluated.outcomes["resnet-base"]
    pairs = transfer.outcomes.pairs[("resnet-base", "resnet-base")].pred
    assert np.array_equal(out.pred[: len(pairs)], pairs)
    assert transfer.rows.loc[transfer.rows.attack != "clean", "transfer_rate"].eq(1.0).all()


PAIR = ("zoo:effnet-base", "zoo:resnet-base")
PAIR_LABELS = ("effnet-base", "resnet-base")


def test_examples_are_crafted_once_and_cached_per_sample(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = run_transfer(TransferConfig(PAIR, run=RunSpec(suite=CHEAP, limit=20, batch_size=10), cache=cache))
    assert first.outcomes.crafted == 2 * 2 * 2  # sources x attacks x batches, whatever the targets
    again = run_transfer(TransferConfig(PAIR, run=RunSpec(suite=CHEAP, limit=20, batch_size=4), cache=cache))
    assert again.outcomes.crafted == 0  # another batch size: every sample's examples come from the cache
    assert again.rows.equals(first.rows)  # the first run scored the examples as kept, not the float ones
    for pair, o in first.outcomes.pairs.items():
        for name in ("pred", "top5", "linf"):
            np.testing.assert_array_equal(getattr(again.outcomes.pairs[pair], name), getattr(o, name))
    wider = run_transfer(TransferConfig((*PAIR, "zoo:effnet-stepll"), ("effnet-base", "resnet-base"),
                                        run=RunSpec(suite=CHEAP, limit=20, batch_size=10), cache=cache))
    assert wider.outcomes.crafted == 0 and len(wider.meta["targets"]) == 3


def test_truncated_cache_files_are_crafted_again_with_one_warning(tmp_path: Path) -> None:
    cache, run = tmp_path / "cache", RunSpec(suite=CHEAP, limit=12, batch_size=6)
    first = run_transfer(TransferConfig(PAIR, run=run, cache=cache))
    files = sorted(cache.rglob("*.safetensors"))
    assert len(files) == 2 * 2  # sources x attacks x blocks (12 samples: one block)
    files[1].write_bytes(files[1].read_bytes()[:40])
    files[2].write_bytes(b"")
    warnings: list[str] = []
    again = run_transfer(TransferConfig(PAIR, run=run, cache=cache), warn=warnings.append)
    assert again.rows.equals(first.rows)
    assert again.outcomes.crafted == 2 * 2  # the two broken (source, attack) shards, once per batch of 6
    said = [w for w in warnings if "crafted again" in w]
    assert len(said) == 1 and said[0].startswith("2 cache files were bad, the first ")
    assert str(files[1]) in said[0] or str(files[2]) in said[0]
    assert "unreadable: " in said[0]
    third = run_transfer(TransferConfig(PAIR, run=run, cache=cache))  # the broken files were written anew
    assert third.outcomes.crafted == 0


TAMPERED_RUN = RunSpec(suite=CHEAP, limit=6, batch_size=6)


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A cache of the tampering tests' run, and that run's result (copy the folder before changing it)."""
    cache = tmp_path_factory.mktemp("cached") / "cache"
    return cache, run_transfer(TransferConfig(PAIR, run=TAMPERED_RUN, cache=cache))


def _flip_a_data_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    k = len(data) - 1000  # in the tensor bytes, after the header: another valid int8 value
    data[k] = 0 if data[k] else 1
    path.write_bytes(bytes(data))


def _rewrite(change: Callable[[torch.Tensor], dict[str, torch.Tensor]]) -> Callable[[Path], None]:
    """Write the shard's tensors changed by ``change``, with a checksum that matches them (a careful forger)."""
    def rewrite(path: Path) -> None:
        from safetensors import safe_open
        from safetensors.torch import save_file

        from robench.run.store import shard_checksum

        with safe_open(str(path), framework="pt") as f:
            meta, q = f.metadata(), f.get_tensor("eps=8.0")
        tensors = change(q)
        meta["sha256"] = shard_checksum(path.parent.name, 0, json.loads(meta["keys"]), tensors)
        save_file(tensors, str(path), metadata=meta)
    return rewrite


def _with_min(q: torch.Tensor) -> dict[str, torch.Tensor]:
    q = q.clone()
    q[2, 0, 0, 0] = -128
    return {"eps=8.0": q}


def _no_checksum(path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    del meta["sha256"]
    save_file(load_file(str(path)), str(path), metadata=meta)


def _sibling(path: Path) -> Path:
    """Another attack's or source's shard of the same block."""
    return next(f for f in sorted(path.parent.parent.rglob("*.safetensors")) if f != path)


TAMPERING = {
    "a flipped byte": (_flip_a_data_byte, "checksum mismatch: altered or torn"),
    "another key": (_rewrite(lambda q: {"eps=4.0": q}), "holds ['eps=4.0'], not ['eps=8.0']"),
    "a key too many": (_rewrite(lambda q: {"eps=8.0": q, "eps=4.0": q.clone()}),
                       "holds ['eps=4.0', 'eps=8.0'], not ['eps=8.0']"),
    "float32 NaN": (_rewrite(lambda q: {"eps=8.0": torch.full(q.shape, float("nan"))}),
                    "eps=8.0 is torch.float32, not torch.int8"),
    "another shape": (_rewrite(lambda q: {"eps=8.0": q[:, :, :16].contiguous()}),
                      "eps=8.0 has shape (6, 3, 16, 32), not (6, 3, 32, 32)"),
    "a sample too few": (_rewrite(lambda q: {"eps=8.0": q[1:].contiguous()}),
                         "eps=8.0 has shape (5, 3, 32, 32), not (6, 3, 32, 32)"),
    "-128": (_rewrite(_with_min), "eps=8.0 holds -128, outside [-127, 127]"),
    "no checksum": (_no_checksum, "no checksum"),
    "another attack's shard": (lambda path: path.write_bytes(_sibling(path).read_bytes()),
                               "checksum mismatch: altered or torn"),
}


@pytest.mark.parametrize(("tamper", "why"), list(TAMPERING.values()), ids=list(TAMPERING))
def test_a_tampered_cache_file_is_crafted_again_and_rewritten(
        tamper: Callable[[Path], None], why: str, cached: tuple[Path, object], tmp_path: Path) -> None:
    """A shard is trusted only with the eps keys, int8, its samples' shape, |q| <= 127 and a matching checksum."""
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(cached[0], cache)
    first = cached[1]
    path = sorted(cache.rglob("*.safetensors"))[3]
    tamper(path)
    warnings: list[str] = []
    again = run_transfer(TransferConfig(PAIR, run=TAMPERED_RUN, cache=cache), warn=warnings.append)
    assert again.rows.equals(first.rows)
    assert again.outcomes.crafted == 1  # the one source and attack whose shard was bad
    assert [w for w in warnings if "crafted again" in w] == [
        f"cache file {path} was bad ({why}); its examples were crafted again and written anew"]
    warnings.clear()
    third = run_transfer(TransferConfig(PAIR, run=TAMPERED_RUN, cache=cache), warn=warnings.append)
    assert third.outcomes.crafted == 0 and not [w for w in warnings if "crafted again" in w]  # rewritten, trusted
    assert third.rows.equals(first.rows)


def test_cache_files_hold_int8_perturbations_within_eps(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    cache, run = tmp_path / "cache", RunSpec(suite=CHEAP, limit=4, batch_size=4)
    done = run_transfer(TransferConfig(PAIR, run=run, cache=cache))
    for path in cache.rglob("*.safetensors"):
        tensors = load_file(str(path))
        assert list(tensors) == ["eps=8.0"]
        assert tensors["eps=8.0"].dtype == torch.int8 and tensors["eps=8.0"].shape == (4, 3, 32, 32)
        assert path.stat().st_size < 4 * (3 * 32 * 32 + 100) + 300  # a byte per pixel, a key, a small header
    for o in done.outcomes.pairs.values():
        assert (o.linf[1:] <= 8.0 + 1e-4).all()  # what was scored stays within eps (1/255 units)


def test_save_returns_the_examples_a_load_gives_and_the_engine_scores_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from robench.core.distributed import LOCAL
    from robench.run.store import ExampleCache

    run = RunSpec(suite=CHEAP, limit=4, batch_size=4)
    opened = runspec.open_run(run, PAIR, LOCAL)
    cache = ExampleCache(tmp_path / "cache", opened.models, run.seed, opened.source.classes)
    g = torch.Generator().manual_seed(0)
    x, ids, spec = torch.rand(3, 3, 32, 32, generator=g), ["a", "b", "c"], CHEAP.attacks[0]
    crafted = [(8.0, (x + (torch.rand(x.shape, generator=g) * 2 - 1) * 8 / 255).clamp(0, 1))]
    kept = cache.save("effnet-base", spec, ids, x, crafted, [0, 1, 2])
    cache.flush()
    loaded = ExampleCache(tmp_path / "cache", opened.models, run.seed, opened.source.classes).load(
        "effnet-base", spec, ids, x, [0, 1, 2])
    assert not torch.equal(kept[0][1], crafted[0][1])  # lossy, and what the engine scores is the kept one
    for row, examples in enumerate(loaded):
        assert torch.equal(examples[0][1], kept[0][1][row])

    def clean_as_kept(self, source, spec, ids, x, examples, rows):  # noqa: ANN001, ANN202 - save's own signature
        return [(e, x.clone()) for e, _ in examples]

    monkeypatch.setattr(ExampleCache, "save", clean_as_kept)
    done = run_transfer(TransferConfig(PAIR, run=run, cache=tmp_path / "other"))
    for o in done.outcomes.pairs.values():  # scored what save returned: the clean input, on the first run
        assert (o.linf[1:] == 0).all() and (o.pred[1:] == o.pred[0]).all()


@pytest.mark.parametrize("eps", [0.0, 1.0, 8.0, 16.0, 127.0, 255.0])
def test_quantized_examples_stay_within_eps_and_close_to_the_crafted_ones(eps: float) -> None:
    g = torch.Generator().manual_seed(int(eps))
    x = torch.rand(4, 3, 16, 16, generator=g)
    x[0] = 0.0  # pixels at both bounds, where the attack's example was clipped
    x[1] = 1.0
    unit = eps / 255
    signs = torch.randint(0, 3, x.shape, generator=g).float() - 1  # -1, 0, 1: the corners of the ball too
    delta = torch.where(torch.rand(x.shape, generator=g) < 0.5, signs, torch.rand(x.shape, generator=g) * 2 - 1)
    x_adv = (x + delta * unit).clamp(0, 1)
    q = quantize(x_adv, x, eps)
    assert q.dtype == torch.int8 and q.shape == x.shape and q.abs().max() <= 127
    kept = dequantize(q, x, eps)
    assert (kept - x).abs().max() <= unit + 1e-7 and kept.min() >= 0 and kept.max() <= 1
    assert (kept - x_adv).abs().max() <= unit / 254 + 1e-7
    if eps == 0:
        assert torch.equal(kept, x)


class OomAbove(nn.Module):
    """The wrapped model, raising CUDA's out-of-memory error on batches larger than ``limit``."""

    def __init__(self, model: nn.Module, limit: int) -> None:
        super().__init__()
        self.model, self.limit = model, limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) > self.limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {len(x)} MiB")
        return self.model(x)


def test_out_of_memory_on_a_target_halves_the_batch_and_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    run = RunSpec(suite=CHEAP, limit=16, batch_size=16, health_probes=False)
    plain = run_transfer(TransferConfig(PAIR, run=run))
    load = runspec.load_model

    def target_oom_above_4(spec, *args, **kwargs):  # noqa: ANN001, ANN202 - load_model's own signature
        loaded = load(spec, *args, **kwargs)
        if loaded.spec.label == "resnet-base":
            loaded.module = OomAbove(loaded.module, 4)
        return loaded

    monkeypatch.setattr(runspec, "load_model", target_oom_above_4)
    warnings: list[str] = []
    fitted = run_transfer(TransferConfig(PAIR, run=run), warn=warnings.append)
    assert warnings == ["out of memory on a batch of 16; retrying with batch size 8",
                        "out of memory on a batch of 8; retrying with batch size 4"]
    assert fitted.rows.equals(plain.rows)
    for pair, o in plain.outcomes.pairs.items():
        np.testing.assert_array_equal(fitted.outcomes.pairs[pair].pred, o.pred)


def test_deliver_keeps_clean_input_and_eps() -> None:
    g = torch.Generator().manual_seed(0)
    x_target = torch.rand(2, 3, 24, 24, generator=g)
    assert torch.equal(deliver(x_target, torch.zeros(2, 3, 32, 32), 8.0), x_target)
    delta = (torch.rand(2, 3, 32, 32, generator=g) * 2 - 1) * 8 / 255
    moved = deliver(x_target, delta, 8.0)
    assert moved.shape == x_target.shape and (moved - x_target).abs().max() <= 8 / 255 + 1e-7
    assert moved.min() >= 0 and moved.max() <= 1


def test_deliver_keeps_an_l2_perturbation_in_the_targets_l2_ball() -> None:
    g = torch.Generator().manual_seed(0)
    x_target = torch.full((2, 3, 64, 64), 0.5)
    delta = (torch.rand(2, 3, 32, 32, generator=g) * 2 - 1) * 0.02  # L2 norm about 0.64 at 32 px
    small = deliver(x_target[:, :, :32, :32], delta, 1.0, norm="l2")  # same size, inside the ball: as it is
    assert torch.allclose(small - 0.5, delta, atol=1e-7)
    big = deliver(x_target, 3 * delta, 1.0, norm="l2")  # upsampled x2 from norm 1.9: longer, scaled back to 1.0
    norms = (big - x_target).flatten(1).norm(dim=1)
    assert torch.allclose(norms, torch.ones(2), atol=1e-5)
    assert (big - x_target).abs().max() > 1 / 255  # not clipped to +-eps/255, the L-inf reading of eps 1


def test_deliver_across_channels() -> None:
    """RGB perturbations reach a 1-channel target as their luminance; gray ones a 3-channel target replicated."""
    g = torch.Generator().manual_seed(0)
    delta = (torch.rand(2, 3, 8, 8, generator=g) * 2 - 1) * 8 / 255
    gray = torch.full((2, 1, 8, 8), 0.5)
    moved = deliver(gray, delta, 8.0)
    expected = 0.5 + 0.299 * delta[:, :1] + 0.587 * delta[:, 1:2] + 0.114 * delta[:, 2:]
    assert moved.shape == (2, 1, 8, 8) and torch.allclose(moved, expected, atol=1e-7)
    assert (moved - gray).abs().max() <= 8 / 255 + 1e-7  # a convex combination stays within eps
    rgb = torch.full((2, 3, 8, 8), 0.5)
    assert torch.equal(deliver(rgb, delta[:, :1], 8.0), (rgb + delta[:, :1]).clamp(0, 1))


def test_three_channel_source_to_one_channel_target(tmp_path: Path) -> None:
    """The new-user trial's crash (exit 3, "expected input ... to have 1 channels, but got 3")."""
    from click.testing import CliRunner

    from robench.cli.main import main

    lenet = Path(__file__).resolve().parents[1] / "examples" / "lenet.py"
    result = CliRunner().invoke(main, ["transfer-matrix", "-m", f"{lenet}:LeNet?input-size=1,32,32",
                                       "zoo:resnet-base", "--attack", "fgsm", "--eps", "8", "--limit", "20", "-q",
                                       "--no-health", "-o", str(tmp_path / "t.json")])
    assert result.exit_code == 0, result.stderr
    rows = json.loads((tmp_path / "t.json").read_text())["rows"]
    assert {(r["source"], r["target"]) for r in rows} == {("resnet-base", "LeNet"), ("LeNet", "resnet-base"),
                                                          ("LeNet", "LeNet"), ("resnet-base", "resnet-base")}


@pytest.fixture(scope="module")
def small_res(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test_resnet at 24 px (random weights, 10 classes) with its own mean/std."""
    import timm

    path = tmp_path_factory.mktemp("res") / "r24.safetensors"
    torch.manual_seed(0)
    save_checkpoint(path, timm.create_model("test_resnet", num_classes=10),
                    {"arch": "test_resnet", "num_classes": 10, "input_size": [3, 24, 24], "mean": [0.4, 0.4, 0.4],
                     "std": [0.3, 0.3, 0.3]})
    return path


def test_resolution_mismatch_pair(small_res: Path) -> None:
    run = RunSpec(suite=override(load_suite(), ("fgsm",), (8.0,)), limit=20)
    result = run_transfer(TransferConfig(("zoo:resnet-base", f"small={small_res}"), run=run))
    alone = run_eval(EvalConfig((f"small={small_res}",), run))
    clean = result.rows[(result.rows.attack == "clean") & (result.rows.target == "small")]
    assert clean.target_top1.iloc[0] == alone.rows.top1.iloc[0]
    cross = result.rows[(result.rows.source == "resnet-base") & (result.rows.target == "small")]
    assert len(cross) == 1 and 0 <= cross.target_top1.iloc[0] <= 1


def test_cli_writes_tidy_rows(tmp_path: Path) -> None:
    out = tmp_path / "t.json"
    result = CliRunner().invoke(main, ["transfer-matrix", "zoo:effnet-base", "zoo:resnet-base", "--attack", "fgsm",
                                       "--eps", "16", "--limit", "10", "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    assert "source \\ target" in result.stdout and "transfer rate" in result.stdout
    doc = json.loads(out.read_text())
    assert doc["command"] == "transfer-matrix" and "transfer_rate" in doc["metrics"]
    assert len(doc["rows"]) == 2 + 4 and doc["crafted_attack_calls"] == 2
    assert "measures only its white-box diagonal" not in result.stderr
    one = CliRunner().invoke(main, ["transfer-matrix", "zoo:effnet-base", "--attack", "fgsm", "--eps", "16", "--limit",
                                    "4", "-q"])
    assert one.exit_code == 0 and "warning: transfer-matrix with one model ('effnet-base') measures only its " \
        "white-box diagonal, no transfer; give two or more models (-m)" in " ".join(one.stderr.split())


def test_the_transfer_suite_runs_by_name(tmp_path: Path) -> None:
    # DI-TI-MI from resnet-base onto effnet-base at the suite's eps 16: rows per target, the combination's
    # switches recorded in the results' config; at eps 16 every image falls on the source itself
    out = tmp_path / "t.json"
    result = CliRunner().invoke(main, ["transfer-matrix", "zoo:resnet-base", "zoo:effnet-base", "--sources",
                                       "resnet-base", "--attacks", "transfer", "--attack", "di-ti-mi", "--limit", "6",
                                       "-q", "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(out.read_text())
    rows = [r for r in doc["rows"] if r["attack"] == "di-ti-mi"]
    assert sorted((r["target"], r["eps"]) for r in rows) == [("effnet-base", 16.0), ("resnet-base", 16.0)]
    white = next(r for r in rows if r["target"] == "resnet-base")
    assert white["target_top1"] == 0.0 and white["n_fooled_source"] == 6
    (spec,) = doc["config"]["suite"]["attacks"]
    assert (spec["name"], spec["diversity"], spec["kernel"], spec["decay"], spec["steps"]) == ("mi_fgsm", 0.5, "auto",
                                                                                               1.0, 10)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["zoo:effnet-base", "--targets", ""], "--targets is empty"),
        (["zoo:effnet-base", "--sources", "nope"], "--sources names 'nope'"),
        (["zoo:nope"], "unknown zoo model"),
        (["zoo:effnet-base", "--cache", "{blocker}/cache"], "is not a writable folder"),
        (["{five}"], "5 classes"),
        (["zoo:effnet-base", "--target-class", "random"], "--target-class random: attack 'step_ll' cannot aim at a "
                                                          "chosen class; those that can: fgsm, bim, pgd, mi_fgsm, "
                                                          "ni_fgsm, di_fgsm, ti_fgsm, vmi_fgsm; pick them with "
                                                          "--attack"),
        (["zoo:effnet-base", "--attack", "fgsm", "--target-class", "most"], "Invalid value for '--target-class': "
                                                                            "'most' is not one of 'random', "
                                                                            "'least_likely'"),
        (["zoo:effnet-base", "zoo:resnet-base", "--source-ensemble", "effnet-base"], "--source-ensemble must join "
         "two or more model labels with '+'"),
        (["zoo:effnet-base", "zoo:resnet-base", "--source-ensemble", "effnet-base+nope"], "--source-ensemble "
         "'effnet-base+nope' names 'nope', which is not a model; labels: effnet-base, resnet-base"),
        (["zoo:effnet-base", "zoo:resnet-base", "--source-ensemble", "resnet-base+resnet-base"],
         "--source-ensemble must name each model once ('resnet-base' is there twice)"),
        (["zoo:effnet-base", "zoo:resnet-base", "--source-ensemble", "effnet-base+resnet-base", "--source-ensemble",
          "resnet-base+effnet-base"], "('resnet-base+effnet-base' repeats 'effnet-base+resnet-base')"),
        (["zoo:effnet-base", "zoo:resnet-base", "--source-ensemble", "effnet-base+resnet-base", "--ensemble-by",
          "loss", "--attacks", "autoattack"], "--ensemble-by loss averages the members' cross-entropy, which 'apgd-ce' "
                                              "(apgd) does not step on; those that do: fgsm, step_ll"),
        (["zoo:effnet-base", "zoo:resnet-base", "--source-ensemble", "effnet-base+resnet-base", "--ensemble-by",
          "max"], "--ensemble-by must be logits, probs or loss"),
        (["zoo:effnet-base", "zoo:resnet-base", "--ensemble-by", "probs"], "--ensemble-by probs says how an ensemble "
         "source combines its members, but no --source-ensemble is given; add one or leave it out"),
    ],
)
def test_bad_input_exit_2(args: list[str], needle: str, tmp_path: Path) -> None:
    import timm

    blocker = tmp_path / "file"
    blocker.write_text("x")
    five = tmp_path / "five.safetensors"
    save_checkpoint(five, timm.create_model("test_resnet", num_classes=5), {"arch": "test_resnet", "num_classes": 5})
    out = tmp_path / "t.json"
    args = [a.format(blocker=blocker, five=five) for a in args]
    result = CliRunner().invoke(main, ["transfer-matrix", *args, "--limit", "5", "--out", str(out)])
    assert result.exit_code == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr  # one line: no blank line from the progress bar
    assert not out.exists()


def test_plot_heatmaps(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    import pandas as pd

    from robench.render.plots import save_figure, transfer_figure

    rows = pd.DataFrame([
        {"source": s, "target": t, "attack": a, "eps": e, "transfer_rate": r}
        for a in ("fgsm", "bim") for e in (4.0, 8.0) for s, t, r in
        [("a", "a", 1.0), ("a", "b", 0.25), ("b", "a", float("nan")), ("b", "b", 1.0)]
    ])
    save_figure(transfer_figure(rows), tmp_path / "m.png")
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["m.png"]


def test_transfer_summary_is_the_mean_off_diagonal_rate() -> None:
    import io

    import pandas as pd
    from rich.console import Console

    from robench.render.tables import transfer_summary

    rows = pd.DataFrame([{"source": s, "target": t, "attack": "fgsm", "eps": 8.0, "transfer_rate": r}
                         for s, t, r in (("a", "a", 1.0), ("a", "b", 0.2), ("b", "a", 0.4), ("b", "b", 1.0))])
    out = io.StringIO()
    Console(file=out, width=80).print(transfer_summary(rows))
    assert "30.0" in out.getvalue() and "8/255" in out.getvalue()  # (20 + 40) / 2, the diagonal left out
    ensemble = pd.DataFrame([{"source": "a+b", "target": t, "attack": "fgsm", "eps": 8.0, "transfer_rate": r}
                             for t, r in (("a", 1.0), ("b", 0.9), ("c", 0.6))])
    out = io.StringIO()
    Console(file=out, width=120).print(transfer_summary(pd.concat([rows, ensemble])))
    assert "40.0" in out.getvalue()  # (20 + 40 + 60) / 3: a+b's cells on its members a and b are white-box



def test_l2_eps_are_labelled_as_l2_norms_not_255ths() -> None:
    import io

    import pandas as pd
    from rich.console import Console

    from robench.render.plots import pyplot, transfer_figure
    from robench.render.tables import transfer_summary, transfer_tables

    rows = pd.DataFrame([{"source": s, "target": t, "attack": a, "norm": norm, "eps": e, "transfer_rate": r,
                          "target_top1": 0.5, "n_fooled_source": 3}
                         for a, norm, e in (("fgsm", "linf", 0.5), ("fgm", "l2", 0.5))
                         for s, t, r in (("a", "a", 1.0), ("a", "b", 0.2), ("b", "a", 0.4), ("b", "b", 1.0))])
    out = io.StringIO()
    console = Console(file=out, width=100)
    for table in [transfer_summary(rows), *transfer_tables(rows)]:
        console.print(table)
    text = out.getvalue()
    assert "fgm eps 0.5 (L2): transfer rate" in text and "fgsm eps 0.5/255: transfer rate" in text
    assert "0.5 (L2)" in text.split("mean transfer rate")[1] and "0.5/255" in text.split("mean transfer rate")[1]
    fig = transfer_figure(rows)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["fgsm eps 0.5/255", "fgm eps 0.5 (L2)"]
    pyplot().close(fig)


@pytest.mark.slow
def test_a_cache_of_other_images_under_the_same_names_is_not_reused(
        tmp_path: Path, twin_folders: tuple[Path, Path]) -> None:
    """A cache filled on folder A gives, on B (A's file names, other pixels), the rows of a run with B's own cache."""
    a, b = twin_folders
    run = {"suite": CHEAP, "batch_size": 10}
    shared, own = tmp_path / "shared", tmp_path / "own"
    on_a = run_transfer(TransferConfig(PAIR, run=RunSpec(data=str(a), **run), cache=shared))
    on_b = run_transfer(TransferConfig(PAIR, run=RunSpec(data=str(b), **run), cache=shared))
    fresh = run_transfer(TransferConfig(PAIR, run=RunSpec(data=str(b), **run), cache=own))
    assert on_b.outcomes.crafted == fresh.outcomes.crafted == on_a.outcomes.crafted > 0  # nothing of A's reused
    assert on_b.rows.equals(fresh.rows) and not on_b.rows.equals(on_a.rows)
    assert on_b.meta["dataset"]["content_sha256"] == fresh.meta["dataset"]["content_sha256"] \
        != on_a.meta["dataset"]["content_sha256"]
    again = run_transfer(TransferConfig(PAIR, run=RunSpec(data=str(b), **run), cache=shared))
    assert again.outcomes.crafted == 0 and again.rows.equals(on_b.rows)  # B's own examples are kept beside A's


ENSEMBLE_SUITE = parse_suite("eps: [4, 8]\nattacks:\n  - name: fgsm\n  - name: pgd\n    steps: 2\n"
                             "  - name: iter_ll\n    steps: 2\n")  # true label, random start, least-likely class


def test_an_ensemble_of_two_copies_crafts_that_models_examples_at_twice_the_passes() -> None:
    """Mean logits of two copies are the one model's, so its examples and every target's outcomes are too."""
    run = RunSpec(suite=ENSEMBLE_SUITE, limit=12, batch_size=6, health_probes=False)
    result = run_transfer(TransferConfig(("a=zoo:resnet-base", "b=zoo:resnet-base", "zoo:effnet-base"), ("a",),
                                         run=run, ensembles=(("a", "b"),)))
    out = result.outcomes
    assert result.meta["sources"] == ["a", "a+b"]
    assert result.meta["ensembles"] == [{"label": "a+b", "members": ["a", "b"], "by": "logits"}]
    for t in ("a", "b", "effnet-base"):
        for name in ("pred", "top5", "linf"):
            np.testing.assert_array_equal(getattr(out.pairs[("a+b", t)], name), getattr(out.pairs[("a", t)], name))
    assert (out.pairs[("a", "a")].linf[1:] > 0).any()  # the attacks did move the pixels
    for attack in ("fgsm", "pgd", "iter_ll"):  # one forward and one backward per member per step, nothing more
        single = out.cost[json.dumps(["a", attack])]
        assert out.cost[json.dumps(["a+b", attack])] == [2 * single[0], 2 * single[1]] and single[1] > 0


def test_an_ensemble_source_plans_each_members_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Progress plans K members' passes for an ensemble step: two copies spend and plan exactly twice one copy."""
    from robench.engine.hooks import Tracker

    seen: dict[str, tuple[int, int]] = {}  # stage -> (passes spent, planned)
    ended = Tracker.ended_call

    def spy(self: Tracker, passes: int) -> None:
        ended(self, passes)
        seen[self.stage] = (self.spent, self._planned(self.step) * self.piece)

    monkeypatch.setattr(Tracker, "ended_call", spy)
    run = RunSpec(suite=override(load_suite(), ("bim",), (1.0,)), limit=8, batch_size=8, health_probes=False)
    run_transfer(TransferConfig(("a=zoo:resnet-base", "b=zoo:resnet-base"), ("a",), run=run, ensembles=(("a", "b"),)))
    (one_spent, one_planned), (two_spent, two_planned) = seen["bim on a"], seen["bim on a+b"]
    assert (two_spent, two_planned) == (2 * one_spent, 2 * one_planned) and 0 < one_spent <= one_planned


def test_ensemble_examples_are_scored_on_held_out_targets(small_res: Path) -> None:
    """An ensemble of two input sizes crafts as a hand-built Ensemble does; a held-out target scores those examples."""
    from robench.attacks import REGISTRY, Labels
    from robench.data import open_source
    from robench.engine import attack_noise, score
    from robench.models.ensemble import Ensemble

    specs = ("zoo:resnet-base", f"small={small_res}", "zoo:effnet-base")
    suite = override(load_suite(), ("fgsm",), (8.0,))
    run = RunSpec(suite=suite, limit=10, batch_size=10, health_probes=False)
    result = run_transfer(TransferConfig(specs, run=run, ensembles=(("resnet-base", "small"),), ensemble_by="probs"))
    models = ["resnet-base", "small", "effnet-base"]  # every model a source, the ensemble one more
    assert result.meta["sources"] == [*models, "resnet-base+small"] and result.meta["targets"] == models
    source = open_source("digits", "test", 10, 0)
    resnet, small, held_out = runspec.load_models(runspec.parse_specs(specs), source, False, torch.device("cpu"))
    ensemble = Ensemble([resnet.module, small.module], [resnet.input, small.input], "probs")
    assert resnet.input.size != small.input.size
    batch = next(source.batches(resnet.input, 10))
    labels = Labels.from_logits(score(ensemble, batch.images), batch.labels)
    ((_, x_adv),) = REGISTRY["fgsm"].run(ensemble, batch.images, labels, (8.0,), suite.attacks[0].config,
                                         attack_noise(0, "fgsm", source.ids))
    xt = x_adv if held_out.input == resnet.input else \
        deliver(next(source.batches(held_out.input, 10)).images, x_adv - batch.images, 8.0)
    pred = score(held_out.module, xt).argmax(1).numpy()
    np.testing.assert_array_equal(result.outcomes.pairs[("resnet-base+small", "effnet-base")].pred[1], pred)
    row = result.rows[(result.rows.source == "resnet-base+small") & (result.rows.target == "effnet-base")]
    assert row.target_top1.item() == float((pred == batch.labels.numpy()).mean())
    white = score(ensemble, x_adv).argmax(1).numpy()  # the source's own outcome prefilters the paper's rate
    y = batch.labels.numpy()
    assert row.n_fooled_source.item() == int(((labels.predicted.numpy() == y) & (white != y)).sum()) > 0


def test_an_ensembles_examples_are_kept_under_its_members_and_mode(tmp_path: Path) -> None:
    """The store keys an ensemble on its members (in order) and mode: a rerun reads them, any change crafts anew."""
    cache, run = tmp_path / "cache", RunSpec(suite=CHEAP, limit=10, batch_size=10, health_probes=False)

    def crafted(members: tuple[str, ...], by: str = "logits", sources: tuple[str, ...] = ("effnet-base",)) -> int:
        result = run_transfer(TransferConfig(PAIR, sources, run=run, cache=cache, ensembles=(members,),
                                             ensemble_by=by))
        return result.outcomes.crafted

    ens = ("effnet-base", "resnet-base")
    assert crafted(ens) == 4  # 2 attacks x 1 batch, for effnet-base and for the ensemble
    assert crafted(ens) == 0
    assert crafted(ens, "probs") == 2 and crafted(ens[::-1]) == 2  # another mode, another order: other examples
    assert crafted(ens, sources=("resnet-base",)) == 2  # the member alone has none kept: only its own crafting


def test_cli_ensemble_source_row_and_results(tmp_path: Path) -> None:
    from robench.results.read import load_results

    out = tmp_path / "t.json"
    result = CliRunner().invoke(main, ["transfer-matrix", "zoo:effnet-base", "zoo:resnet-base", "zoo:effnet-stepll",
                                       "--source-ensemble", "effnet-base+resnet-base", "--attack", "fgsm", "--eps",
                                       "16", "--limit", "8", "--no-health", "--sources", "effnet-stepll", "--out",
                                       str(out)])
    assert result.exit_code == 0, result.stderr
    assert "│ effnet-base+resnet-base │" in result.stdout  # one source row, named by its members
    doc = load_results(out)  # the schema's check
    assert doc["ensembles"] == [{"label": "effnet-base+resnet-base", "members": ["effnet-base", "resnet-base"],
                                 "by": "logits"}]
    assert doc["config"]["ensembles"] == [["effnet-base", "resnet-base"]] and doc["config"]["ensemble_by"] == "logits"
    adv = [r for r in doc["rows"] if r["attack"] != "clean"]
    assert [(r["source"], r["target"]) for r in adv] == [(s, t) for s in ("effnet-stepll", "effnet-base+resnet-base")
                                                         for t in ("effnet-base", "resnet-base", "effnet-stepll")]

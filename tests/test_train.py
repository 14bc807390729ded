"""Adversarial training: loss weighting, eps sampler, checkpoint metadata, determinism, bad input."""

from __future__ import annotations

import dataclasses
import math
import os
import signal
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from robench.attacks.base import Labels
from robench.attacks.iterative import PgdConfig, pgd
from robench.attacks.single_step import FgsmConfig, StepLLConfig, fgsm, step_ll
from robench.cli.main import main
from robench.errors import FieldError, RobenchError
from robench.models import load_model, parse_spec, weights_sha256
from robench.models.checkpoint import input_metadata, read_metadata
from robench.models.recipe import TRAIN_ATTACKS, TrainConfig
from robench.train.loop import Draws, craft_batch, crafting, mixed_loss_sum, sample_eps, start_noise, train, train_step

FAST = {"epochs": 1, "limit": 96, "batch_size": 32, "image_size": 16}


class ConstantLogits(nn.Module):
    """Logits [ln 3, 0] whatever the image: CE log(4/3) for class 0, log 4 for class 1.

    The input gradient is zero, so crafted examples equal their images and the losses stay known.
    """

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([math.log(3.0), 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias + 0 * x.flatten(1).sum(1, keepdim=True)


def test_train_step_loss_matches_formula_by_hand() -> None:
    """(sum clean CE + lam * sum adversarial CE) / (n_clean + lam * n_adv), the paper's weighting."""
    model = ConstantLogits()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.rand(4, 1, 2, 2), torch.tensor([1, 1, 0, 0])  # adversarial: the first two (class 1)
    cfg = TrainConfig(train_attack="fgsm", adv_fraction=0.5, lam=0.3)
    loss, n_clean, right, n_adv, adv_right = train_step(model, opt, x, y, cfg, torch.Generator().manual_seed(0))
    expected = (2 * math.log(4 / 3) + 0.3 * 2 * math.log(4)) / (2 + 0.3 * 2)
    assert loss == pytest.approx(expected, rel=1e-6) and (n_clean, right, n_adv, adv_right) == (2, 2, 2, 0)
    clean_only = TrainConfig(train_attack="fgsm", adv_fraction=0.0, lam=0.3)
    loss, n_clean, *_ = train_step(ConstantLogits(), opt, x, y, clean_only, torch.Generator())
    assert loss == pytest.approx((2 * math.log(4) + 2 * math.log(4 / 3)) / 4, rel=1e-6) and n_clean == 4


def test_mixed_loss_sum_by_hand() -> None:
    # logits [0, 0] give CE = log 2 for either label; logits [ln 3, 0] with label 0 give CE = log(4/3)
    clean_logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    adv_logits = torch.tensor([[0.0, 0.0]])
    total = mixed_loss_sum(clean_logits, torch.tensor([1, 0]), adv_logits, torch.tensor([0]), lam=0.3)
    assert float(total) == pytest.approx(math.log(2) + math.log(4 / 3) + 0.3 * math.log(2), rel=1e-6)
    assert float(mixed_loss_sum(clean_logits, torch.tensor([1, 0]), adv_logits[:0], torch.tensor([], dtype=torch.long),
                                lam=0.3)) == pytest.approx(math.log(2) + math.log(4 / 3), rel=1e-6)


def test_eps_sampler_range_and_shape() -> None:
    eps = sample_eps(200_000, 16.0, 8.0, torch.Generator().manual_seed(0)).double()
    assert eps.min() >= 0 and eps.max() <= 16
    # mean of |N(0, s)| truncated to [0, a]: s sqrt(2/pi) (1 - exp(-a^2 / 2 s^2)) / erf(a / (s sqrt 2))
    s, a = 8.0, 16.0
    mean = s * math.sqrt(2 / math.pi) * (1 - math.exp(-(a**2) / (2 * s**2))) / math.erf(a / (s * math.sqrt(2)))
    assert float(eps.mean()) == pytest.approx(mean, abs=0.05)
    counts = torch.histc(eps, bins=8, min=0, max=16)
    assert all(counts[i] > counts[i + 1] for i in range(7)), "density must fall from 0 to eps_max"
    assert torch.equal(sample_eps(5, 0.0, 8.0, torch.Generator()), torch.zeros(5))


def test_fixed_eps_draws_eps_max_for_every_example() -> None:
    from robench.train.loop import draw

    gen = torch.Generator().manual_seed(0)
    draws = draw(5, (1, 8, 8), TrainConfig(train_attack="fgsm", eps_dist="fixed", eps_max=16), gen)
    assert draws.eps.tolist() == [16.0] * 5
    with pytest.raises(FieldError, match="eps_dist 'uniform' must be one of folded_normal, fixed"):
        TrainConfig(eps_dist="uniform").validate()


def test_crafting_is_what_the_registry_says() -> None:
    assert [(a, *dataclasses.astuple(crafting(a))) for a in TRAIN_ATTACKS[1:]] == [
        ("step_ll", True, False, False), ("fgsm", False, False, False), ("bim", False, True, False),
        ("pgd", False, True, True)]  # (least_likely, iterative, random_start)


def test_craft_respects_per_example_eps(small_cnn) -> None:
    x = torch.rand(4, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    eps = torch.tensor([0.0, 2.0, 8.0, 16.0])
    for attack in TRAIN_ATTACKS[1:]:
        how = crafting(attack)
        noise = start_noise(tuple(x.shape), torch.Generator().manual_seed(0)) if how.random_start else None
        adv = craft_batch(small_cnn, x, torch.tensor([0, 1, 2, 3]), Draws(eps, noise), TrainConfig(train_attack=attack))
        dist = (adv - x).abs().flatten(1).max(1).values
        assert torch.all(dist <= eps / 255 + 1e-6) and adv.min() >= 0 and adv.max() <= 1
        assert torch.equal(adv[0], x[0])


@pytest.mark.parametrize(("attack", "label", "registry", "config"), [
    ("fgsm", "true", fgsm, FgsmConfig("true")), ("fgsm", "predicted", fgsm, FgsmConfig("predicted")),
    ("step_ll", "true", step_ll, StepLLConfig()),
    ("bim", "true", pgd, PgdConfig("true", steps=5, random_start=False)),  # training's bim: 2.5 eps / steps
])
def test_craft_agrees_with_the_registry_at_one_eps(small_cnn, attack, label, registry, config) -> None:
    """With one eps for every example, training crafts what the registry's attack does."""
    x = torch.rand(6, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    small_cnn.eval()
    with torch.no_grad():
        labels = Labels.from_logits(small_cnn(x), y)
    cfg = TrainConfig(train_attack=attack, label=label, steps=5)
    for e in (2.0, 8.0):
        ours = craft_batch(small_cnn, x, y, Draws(torch.full((6,), e), None), cfg)
        [(_, theirs)] = list(registry(small_cnn, x, labels, [e], config))
        if attack == "bim":  # the step size is computed per example here, once there: an ulp apart at most
            assert torch.allclose(ours, theirs, atol=1e-6, rtol=0), e
        else:
            assert torch.equal(ours, theirs), (attack, e)


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("train") / "m.safetensors"
    return out, train(TrainConfig(train_attack="step_ll", **FAST), out)


def test_checkpoint_metadata_round_trip(trained_once) -> None:
    out, result = trained_once
    meta = read_metadata(out)
    assert meta == result.meta
    assert (meta["arch"], meta["num_classes"], meta["epochs_done"]) == ("test_resnet", 10, 1)
    assert meta["input_size"] == [3, 16, 16]
    assert meta["recipe"]["attack"] == "step_ll" and meta["recipe"]["lam"] == 0.3 and meta["seed"] == 0
    assert 0 <= meta["val_accuracy"] <= 1 and 0 <= meta["train_accuracy"] <= 1 and 0 <= meta["train_adv_accuracy"] <= 1
    assert list(result.history.columns) == ["epoch", "loss", "train_accuracy", "train_adv_accuracy"]
    model = load_model(parse_spec(str(out)), num_classes=10)
    assert model.input.size == (16, 16) and model.mean == (0.5, 0.5, 0.5)
    assert (model.input.crop_pct, model.input.crop_mode) == (1.0, "center")  # the whole image, as trained
    assert input_metadata(model.input, model.mean, model.std).items() <= meta.items()  # read back as written


def test_same_seed_same_weights(trained_once, tmp_path: Path) -> None:
    out, _ = trained_once
    again = tmp_path / "again.safetensors"
    train(TrainConfig(train_attack="step_ll", **FAST), again)
    assert again.read_bytes() == out.read_bytes()
    other = tmp_path / "other.safetensors"
    train(TrainConfig(train_attack="step_ll", **{**FAST, "seed": 1}), other)
    a = load_model(parse_spec(str(out)), 10).module.model
    b = load_model(parse_spec(str(other)), 10).module.model
    assert weights_sha256(a) != weights_sha256(b)


def test_adversarial_fraction_one_and_none_run(tmp_path: Path) -> None:
    for attack, fraction in (("fgsm", 1.0), ("none", 0.5)):
        result = train(TrainConfig(train_attack=attack, adv_fraction=fraction, label="predicted", **FAST),
                       tmp_path / f"{attack}.safetensors")
        assert math.isfinite(result.history["loss"].iloc[0])
        last = result.history.iloc[-1]
        if attack == "fgsm":  # every example adversarial: no clean accuracy to report, only the adversarial one
            assert last["train_accuracy"] is None and 0 <= last["train_adv_accuracy"] <= 1
            assert "train_accuracy" not in result.meta and read_metadata(tmp_path / "fgsm.safetensors") == result.meta
        else:
            assert 0 <= last["train_accuracy"] <= 1 and last["train_adv_accuracy"] is None


def test_plain_loss_equals_cross_entropy() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x, y = torch.rand(5, 3, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    with torch.no_grad():
        expected = F.cross_entropy(model(x), y)
    loss, n_clean, _, n_adv, _ = train_step(model, torch.optim.SGD(model.parameters(), lr=0.1), x, y,
                                            TrainConfig(train_attack="none"), torch.Generator())
    assert loss == pytest.approx(float(expected), rel=1e-6)
    assert (n_clean, n_adv) == (5, 0)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--arch", "test_resnt"], "did you mean test_resnet"),
        # ranges and choices: Click's one line, naming the option (the library's checks stay behind them)
        (["--lam", "-0.1"], "Invalid value for '--lam': -0.1 is not in the range x>=0"),
        (["--adv-fraction", "1.5"], "Invalid value for '--adv-fraction': 1.5 is not in the range 0<=x<=1"),
        (["--train-attack", "cw"], "Invalid value for '--train-attack': 'cw' is not one of 'none', 'step_ll'"),
        (["--label", "truth"], "Invalid value for '--label': 'truth' is not one of 'true', 'predicted'"),
        (["--seed", "-3"], "Invalid value for '--seed': -3 is not in the range 0<=x<=9223372036854775807"),
        (["--epochs", "0"], "Invalid value for '--epochs': 0 is not in the range 1<=x<=10000"),
        (["--image-size", "3,32,32"], "'--image-size': '3,32,32': give one side in pixels, e.g. 32"),
        (["--lr", "0"], "Invalid value for '--lr': 0.0 is not in the range x>0"),
        (["--val-fraction", "1"], "Invalid value for '--val-fraction': 1.0 is not in the range 0<=x<1"),
        (["--out", "/nonexistent-dir/m.safetensors"], "does not exist"),
        (["--out", "m.pth"], "unknown format"),
        # settings that measure nothing: inf and NaN trained a checkpoint of NaN weights
        (["--lr", "inf"], "--lr inf must be a finite number"),
        (["--lr", "nan"], "--lr nan must be a finite number"),
        (["--lam", "inf"], "--lam inf must be a finite number"),
        (["--adv-fraction", "nan"], "--adv-fraction nan must be a finite number"),
        (["--weight-decay", "-inf"], "Invalid value for '--weight-decay': -inf is not in the range x>=0"),
        (["--weight-decay", "-0.1"], "Invalid value for '--weight-decay': -0.1 is not in the range x>=0"),
        (["--val-fraction", "nan"], "--val-fraction nan must be a finite number"),
        (["--eps-sigma", "inf"], "--eps-sigma: eps 'inf' is not a number"),
        (["--eps-max", "nan"], "--eps-max: eps 'nan' is not a number"),
        (["--steps", "0"], "Invalid value for '--steps': 0 is not in the range 1<=x<=10000"),
        # values that parse but cannot run: torch overflowed (exit 3) or the run allocated beyond any memory
        (["--steps", str(10**30), "--train-attack", "pgd"], f"'--steps': {10**30} is not in the range 1<=x<=10000"),
        (["--batch-size", "99999999999"], "'--batch-size': 99999999999 is not in the range 2<=x<=1048576"),
        (["--batch-size", "1"], "'--batch-size': 1 is not in the range 2<=x<=1048576"),
        (["--image-size", "100000"], "'--image-size': 100000 is not in the range 8<=x<=4096"),
        (["--threads", str(10**30)], f"'--threads': {10**30} is not in the range 1<=x<=1024"),
        (["--seed", str(10**23)], f"'--seed': {10**23} is not in the range 0<=x<=9223372036854775807"),
        (["--device", "meta"], "unknown device 'meta' for --device"),
        (["--weight-decay", "1e308"], "--weight-decay 1e+308 times lr 0.003 must be below 1 (AdamW shrinks"),
    ],
)
def test_bad_input_exit_2(args: list[str], needle: str, tmp_path: Path) -> None:
    out_args = [] if "--out" in args else ["--out", str(tmp_path / "m.safetensors")]
    result = CliRunner().invoke(main, ["train", "--epochs", "1", "--limit", "8", *out_args, *args])
    assert result.exit_code == 2, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert not list(tmp_path.iterdir())


def test_library_errors_name_fields() -> None:
    with pytest.raises(FieldError) as err:
        TrainConfig(lam=-0.1).validate()
    assert (str(err.value), err.value.field) == ("lam -0.1 must be >= 0", "lam")
    with pytest.raises(FieldError, match="^adv_fraction 1.5 must lie in"):
        TrainConfig(adv_fraction=1.5).validate()
    for name in ("lr", "weight_decay", "lam", "eps_max", "eps_sigma", "adv_fraction", "val_fraction"):
        for bad in (math.inf, -math.inf, math.nan):
            with pytest.raises(FieldError, match=f"^{name} {bad!r} must be a finite number$") as err:
                TrainConfig(**{name: bad}).validate()
            assert err.value.field == name


def test_diverged_training_is_refused_before_its_weights_are_written(tmp_path: Path) -> None:
    from results_docs import one_error_line

    out = tmp_path / "m.safetensors"
    result = CliRunner().invoke(main, ["train", "--train-attack", "none", "--epochs", "1", "--limit", "64",
                                       "--batch-size", "16", "--image-size", "16", "--lr", "1e30",
                                       "--weight-decay", "0", "-q", "--out", str(out)])
    one_error_line(result, 2, "training diverged in epoch 1: the weights hold NaN or inf; lower --lr (now 1e+30)")
    assert not out.exists()


def test_unwritable_output(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where the output folder should be: cannot be written, even by root
    with pytest.raises(RobenchError, match="does not exist"):
        train(TrainConfig(**FAST), blocker / "m.safetensors")
    with pytest.raises(RobenchError, match="is a folder"):
        (tmp_path / "dir.safetensors").mkdir()
        train(TrainConfig(**FAST), tmp_path / "dir.safetensors")


def test_cli_train_writes_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    result = CliRunner().invoke(main, ["train", "--train-attack", "none", "--epochs", "1", "--limit", "64",
                                       "--image-size", "16", "-q", "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    assert read_metadata(out)["recipe"]["attack"] == "none" and "test accuracy" in result.stderr
    assert result.stderr.rstrip().endswith(" after 1 epoch"), result.stderr  # not "1 epochs"


@pytest.mark.parametrize(("option", "value"), [("--adv-fraction", "0"), ("--lam", "0")])
def test_cli_train_says_when_no_adversarial_example_counts(tmp_path: Path, option: str, value: str) -> None:
    out = tmp_path / "m.safetensors"
    result = CliRunner().invoke(main, ["train", "--train-attack", "fgsm", option, value, "--epochs", "1", "--limit",
                                       "64", "--image-size", "16", "-q", "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    said = " ".join(result.stderr.split())
    assert f"{option} 0 leaves no adversarial example in the loss: this trains plainly, though the checkpoint " \
           f"records fgsm training" in said


def test_cli_train_all_adversarial_says_there_were_no_clean_examples(tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    result = CliRunner().invoke(main, ["train", "--train-attack", "fgsm", "--adv-fraction", "1", "--epochs", "1",
                                       "--limit", "64", "--image-size", "16", "-q", "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    assert " % adversarial (no clean examples), test accuracy " in " ".join(result.stderr.split())


def test_cli_trains_on_the_train_split_of_mnist_format_files(tmp_path: Path) -> None:
    """mnist:DIR trains on train-* and scores on t10k-*; the issue-30 recipe (fixed eps 0.3 px) is recorded."""
    import numpy as np

    from tests.test_data import _write_fashion

    rng, data = np.random.default_rng(0), tmp_path / "mnist"
    data.mkdir()
    for prefix, n in (("train", 12), ("t10k", 6)):
        _write_fashion(data, rng.integers(0, 256, (n, 28, 28)), np.arange(n) % 10, gz=False, prefix=prefix)
    out = tmp_path / "m.safetensors"
    result = CliRunner().invoke(main, ["train", "-d", f"mnist:{data}", "--arch", "test_efficientnet", "--epochs",
                                       "1", "--batch-size", "4", "--image-size", "16", "--train-attack", "fgsm",
                                       "--adv-fraction", "0.5", "--lam", "1", "--eps-dist", "fixed", "--eps-max",
                                       "0.3px", "-q", "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    meta = read_metadata(out)
    assert meta["dataset"] == f"mnist:{data}:train"
    assert (meta["recipe"]["eps_max"], meta["recipe"]["eps_dist"]) == (76.5, "fixed")


def test_a_final_minibatch_of_one_is_left_out_and_said(tmp_path: Path) -> None:
    """--limit 65 --batch-size 64 trained the epoch, then exited 3 on BatchNorm's "more than 1 value per channel"."""
    out = tmp_path / "m.safetensors"
    result = CliRunner().invoke(main, ["train", "--arch", "test_resnet", "--epochs", "2", "--limit", "65",
                                       "--batch-size", "64", "--image-size", "16", "-q", "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count("end each epoch with 1, fewer than 2 per process") == 1
    assert read_metadata(out)["epochs_done"] == 2


def _folder(root: Path, n: int = 20) -> Path:
    from PIL import Image

    for c in range(2):
        (root / str(c)).mkdir(parents=True)
        for i in range(n // 2):
            Image.new("L", (8, 8), 40 + 150 * c + i).save(root / str(c) / f"{i}.png")
    return root


def test_a_folder_without_val_split_holds_out_a_seeded_share(tmp_path: Path) -> None:
    """The 'test accuracy' of a folder without val/ was measured on its training images, without a word."""
    from robench.train.loop import split_sources

    folder = _folder(tmp_path / "f")
    cfg = TrainConfig(data=str(folder), val_fraction=0.25, seed=3)
    kept, val, record = split_sources(cfg)
    assert (len(kept.ids), len(val.ids)) == (15, 5) and not set(kept.ids) & set(val.ids)
    assert record == {"validation": {"split": "held_out", "fraction": 0.25, "n": 5, "seed": 3}}
    again, other = split_sources(cfg)[1], split_sources(TrainConfig(data=str(folder), val_fraction=0.25, seed=4))[1]
    assert again.ids == val.ids and other.ids != val.ids  # seeded: the same seed holds out the same images
    notes: list[str] = []
    kept, val, record = split_sources(TrainConfig(data=str(folder), val_fraction=0), notes.append)
    assert kept.ids == val.ids and record == {"validation": {"split": "train", "n": 20}}
    assert notes == [f"{folder} has no val/ split and val_fraction is 0: the test accuracy is measured on the "
                     f"training images"]  # the library names the field (a FieldNote); the CLI says --val-fraction
    assert split_sources(TrainConfig())[2] == {}  # digits has its own test split
    out = tmp_path / "m.safetensors"
    result = CliRunner().invoke(main, ["train", "--data", str(folder), "--epochs", "1", "--batch-size", "4",
                                       "--image-size", "8", "-q", "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    assert read_metadata(out)["validation"] == {"split": "held_out", "fraction": 0.1, "n": 2, "seed": 0}
    assert "val_fraction" not in read_metadata(out)["recipe"]  # at its default: zoo recipes keep their bytes


def test_train_eps_options_read_eps_as_eval_does(tmp_path: Path) -> None:
    """--eps-max 0.031 (CIFAR's 8/255 written in pixels) trained 255 times too weakly; 8/255 was refused."""
    from results_docs import one_error_line

    args = ["train", "--train-attack", "fgsm", "--epochs", "1", "--limit", "64", "--image-size", "16", "-q"]
    one_error_line(CliRunner().invoke(main, [*args, "--eps-max", "0.031", "--out", str(tmp_path / "a.safetensors")]),
                   2, "--eps-max: eps 0.031 is in 1/255 units")
    out = tmp_path / "b.safetensors"
    result = CliRunner().invoke(main, [*args, "--eps-max", "8/255", "--eps-sigma", "0.016px", "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    assert (read_metadata(out)["recipe"]["eps_max"], read_metadata(out)["recipe"]["eps_sigma"]) == (8.0, 4.08)
    with pytest.raises(FieldError, match="eps_max 0.031 is in 1/255 units"):
        TrainConfig(eps_max=0.031).validate()


def test_val_fraction_that_leaves_too_little_names_itself(tmp_path: Path) -> None:
    from results_docs import one_error_line

    folder = _folder(tmp_path / "f")
    result = CliRunner().invoke(main, ["train", "--data", str(folder), "--val-fraction", "0.95", "--epochs", "1",
                                       "--image-size", "8", "--out", str(tmp_path / "m.safetensors")])
    one_error_line(result, 2, "--val-fraction 0.95 holds out 19 of the 20 images", "leaving 1 to train on")


def test_interrupt_keeps_last_finished_epoch(tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"

    def stop_in_second_epoch(stats) -> None:
        if stats.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**{**FAST, "epochs": 3}), out, stop_in_second_epoch)
    meta = read_metadata(out)
    assert meta["epochs_done"] == 1 and "val_accuracy" not in meta
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary file left behind


def test_sigterm_keeps_last_finished_epoch_in_one_line_and_exits_143(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from results_docs import one_error_line

    import robench.train.loop

    out, real = tmp_path / "m.safetensors", robench.train.loop.train

    def terminated_in_second_epoch(cfg, path, progress, *args):
        def progress_then_term(stats) -> None:
            if stats.epoch == 2:
                os.kill(os.getpid(), signal.SIGTERM)  # the CLI's handler turns it into robench.errors.Terminated

        return real(cfg, path, progress_then_term, *args)

    monkeypatch.setattr(robench.train.loop, "train", terminated_in_second_epoch)
    result = CliRunner().invoke(main, ["train", "--train-attack", "none", "--epochs", "2", "--limit", "64",
                                       "--image-size", "16", "-q", "--out", str(out)])
    one_error_line(result, 143, f"robench: error: terminated (SIGTERM); {out} holds the last finished epoch")
    assert read_metadata(out)["epochs_done"] == 1

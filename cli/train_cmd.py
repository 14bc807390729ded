"""`robench train`: adversarial training with the paper's recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from robench.models.preprocess import MAX_SIDE
from robench.models.recipe import EPS_DISTS, LABELS, TRAIN_ATTACKS
from robench.render.console import console, epoch_bar

from .options import MAX_BATCH, RobenchCommand, eps_value, say, shared_options


class SideRange(click.IntRange):
    """One side in pixels; eval's C,H,W habit (--input-size 3,32,32) gets a hint, not "not a valid integer range"."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and "," in value:
            sides = [v.strip() for v in value.split(",")]
            self.fail(f"{value!r}: give one side in pixels, e.g. {sides[-1] or 32} (the image is square; its "
                      "channels come from the data)", param, ctx)
        return super().convert(value, param, ctx)


MAX_STEPS = 10_000  # robench.models.recipe.TrainConfig's limits (tests/test_cli_options.py checks them)
MAX_EPOCHS = 10_000


@click.command("train", cls=RobenchCommand, renamed={"--input-size": "image_size", "--attack": "train_attack"})
@click.option("--arch", default="test_resnet", show_default=True, metavar="NAME",
              help="A timm architecture name, or a factory FILE.py:CALLABLE or package.module:CALLABLE taking "
                   "num_classes= (runs that code).")
@shared_options(
    "data", "limit", "seed", "device", "threads", "class_order", "classes",
    data={"help": "Training data: digits | fashion-mnist[:DIR] | mnist:DIR | IMAGE_FOLDER | torch/NAME | hfds/NAME "
                  "(its train split; test accuracy is measured on its test split, or see --val-fraction). "
                  "Default: digits."},
    limit={"help": "Train on N samples of the train split, drawn by a seeded permutation. Default: all of them."},
    seed={"help": "Seed for the initial weights, sample choice, minibatch order, eps draws and random starts."},
    class_order={"help": "How an image folder numbers its class folders: natural (timm: 1, 2, 10) or lexical "
                         "(torchvision's ImageFolder: 1, 10, 2); --classes comes first. The checkpoint records "
                         "the numbering."},
    classes={"help": "Class names in index order, one a line: numbers the image folder's class folders (every "
                     "folder must be named); the checkpoint records them."},
)
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, metavar="FILE",
              help="Checkpoint to write, a .safetensors file (rewritten after every epoch).")
@click.option("--train-attack", "train_attack", type=click.Choice(TRAIN_ATTACKS), default="step_ll",
              show_default=True,
              help="The attack crafting the adversarial examples (none: plain training).")
@click.option("--label", type=click.Choice(LABELS), default="true", show_default=True,
              help="fgsm/bim/pgd: craft with true or predicted labels (true labels leak).")
@click.option("--adv-fraction", type=click.FloatRange(0, 1), default=0.5, show_default=True, metavar="X",
              help="Share of each minibatch replaced.")
@click.option("--lam", type=click.FloatRange(min=0), default=0.3, show_default=True, metavar="X",
              help="Weight of the adversarial loss.")
@click.option("--eps-max", default="16", show_default=True, callback=eps_value, metavar="EPS",
              help="Largest eps in 1/255 units (16, 16/255 or 0.063px; a plain number below 1 is refused).")
@click.option("--eps-sigma", default="8", show_default=True, callback=eps_value, metavar="EPS",
              help="Sigma of the folded normal, in 1/255 units like --eps-max.")
@click.option("--eps-dist", type=click.Choice(EPS_DISTS), default="folded_normal", show_default=True,
              help="Each adversarial example's eps: the paper's folded normal, or --eps-max for every example "
                   "(the fixed-eps FGSM training of the catastrophic-overfitting literature).")
@click.option("--steps", type=click.IntRange(1, MAX_STEPS), default=5, show_default=True, metavar="N",
              help="bim/pgd steps per example.")
@click.option("--epochs", type=click.IntRange(1, MAX_EPOCHS), default=10, show_default=True, metavar="N",
              help="Passes over the training data; the checkpoint is rewritten after each.")
@shared_options("batch_size", batch_size={
    "type": click.IntRange(2, MAX_BATCH), "default": 64,
    "help": "Minibatch size; under torchrun the global batch, shared among the processes (at least 2 each)."})
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=3e-3, show_default=True, metavar="X",
              help="AdamW learning rate.")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.05, show_default=True, metavar="X",
              help="AdamW's decoupled weight decay (lr * weight decay must stay below 1).")
@click.option("--image-size", "image_size", type=SideRange(8, MAX_SIDE), default=32, show_default=True,
              metavar="N", help="Training resolution: the side of the square image in pixels (timm's --img-size).")
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True,
              metavar="X",
              help="An image folder without a val/ split: the seeded share held out to measure test accuracy "
                   "(0: measure on the training images, said in the output and the checkpoint).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def train_command(out: Path, quiet: bool, device: str, threads: int | None, **options: Any) -> None:
    """Train a timm model, or a factory's (FILE.py:CALLABLE), with the paper's adversarial-training recipe.

    Each minibatch mixes clean and adversarial examples (--adv-fraction), the loss
    weighs them (clean + lam * adversarial) / (n_clean + lam * n_adv), and each
    adversarial example draws its eps from a normal N(0, eps-sigma) folded and
    truncated to [0, eps-max]. The checkpoint (.safetensors) records the recipe,
    so `robench eval FILE.safetensors` needs nothing else.

    Under torchrun every process trains on its share of each minibatch with
    DistributedDataParallel (--batch-size stays the global batch); rank 0 writes.

    \b
    Examples:
      robench train --arch test_resnet --train-attack step_ll --out stepll.safetensors
      robench train --train-attack none --out baseline.safetensors
      torchrun --nproc-per-node 4 -m robench train --out stepll.safetensors
    """
    from robench.core.outputs import check_output
    from robench.models.recipe import TrainConfig

    options["data"] = options["data"] or "digits"  # train's data is given or digits (no checkpoint to ask)
    cfg = TrainConfig(**options)  # before torch: a typo costs a second, not the imports
    check_output(out, (".safetensors",), "out", regular=True)
    from robench.core.distributed import session
    from robench.core.outputs import check_outputs
    from robench.errors import Interrupted
    from robench.models.factories import is_factory
    from robench.train.loop import train

    from .options import run_inputs

    arch = cfg.arch
    check_outputs([("--out", out)], [(o.replace("MODEL", "--arch"), p) for o, p in
                                     run_inputs((arch,) if is_factory(arch) else (), classes=cfg.classes,
                                                data=cfg.data)])
    if threads is not None:  # not in TrainConfig: the thread count does not decide the weights (nor the zoo's recipes)
        import torch

        from robench.core.fields import check
        from robench.run.runspec import RUN_FIELDS

        check({"threads": threads}, {"threads": RUN_FIELDS["threads"]})
        torch.set_num_threads(threads)
    with session(device) as dist:
        try:
            with epoch_bar(cfg.epochs, not quiet and dist.is_main) as progress:
                result = train(cfg, out, progress, dist, say if dist.is_main else None)
        except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: one line, saying what the checkpoint holds
            kept = f"; {out} holds the last finished epoch" if dist.is_main and out.is_file() else ""
            raise Interrupted.of(stop, kept) from None
    if not dist.is_main:
        return
    meta, done = result.meta, int(result.meta["epochs_done"])
    shares = [f"{100 * meta[key]:.1f} % {what}" for key, what in (("train_accuracy", "clean"),
                                                                   ("train_adv_accuracy", "adversarial"))
              if meta.get(key) is not None]
    if "train_accuracy" not in meta:
        shares[-1] += " (no clean examples)"
    console(err=True).print(
        f"wrote {out}: train accuracy {', '.join(shares)}, "
        f"test accuracy {100 * meta['val_accuracy']:.1f} % after {done} epoch{'' if done == 1 else 's'}"
    )

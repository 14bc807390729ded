"""Options shared by the commands that evaluate models, declared once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from robench.attacks.suite import Suite

MODEL_SPEC = (
    "[LABEL=]MODEL[@CHECKPOINT][?KEY=VALUE&...] (repeatable). MODEL: a timm name, a robench .safetensors file, "
    "zoo:NAME, or a factory FILE.py:CALLABLE or package.module:CALLABLE (this imports and runs that code). "
    "KEY sets this model's input: mean, std, input-size (C,H,W), interpolation, crop-pct; quote the spec, "
    "e.g. 'lenet.py:LeNet@w.pth?mean=0.1307&std=0.3081'."
)


def model_option(default: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """-m/--model SPEC (repeatable), one help text for every command; ``default`` says what no -m evaluates."""
    return click.option("-m", "--model", "models", multiple=True, metavar="SPEC", help=f"{MODEL_SPEC} {default}")


def zoo_default_text() -> str:
    """What no model means in eval and transfer-matrix, from robench.models.zoo.DEFAULT (light: no torch)."""
    from robench.models.zoo import DEFAULT

    names = [f"zoo:{name}" for name in DEFAULT]
    return f"Default: {', '.join(names[:-1])} and {names[-1]}, together (see `robench zoo list`)."


_RUN_OPTIONS = {
    "data": click.option("-d", "--data", metavar="DATA",
                         help="digits | fashion-mnist[:DIR] | mnist:DIR | IMAGE_FOLDER | torch/NAME | hfds/NAME. "
                              "Default: the dataset the models' checkpoints say they trained on, else digits."),
    "limit": click.option("--limit", type=int, metavar="N",
                          help="Use N samples, drawn by a seeded permutation. Default: all of the split (evaluating: "
                               "the test split, digits: 360 images)."),
    "seed": click.option("--seed", type=int, default=0, show_default=True,
                         help="Seed for sample choice and random starts (train: and the weights)."),
    "batch_size": click.option("--batch-size", type=click.IntRange(min=1), default=100, show_default=True),
    "device": click.option("--device", default="auto", show_default=True,
                           help="auto, cpu, cuda, cuda:N or mps; under torchrun each process takes cuda:LOCAL_RANK."),
    "pretrained": click.option("--pretrained", is_flag=True,
                               help="Load hub weights for NAME (needs network or a warm cache)."),
    "workers": click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
                            help="Data-loading worker processes for image folders."),
    "threads": click.option("--threads", type=click.IntRange(min=1), metavar="N",
                            help="torch intra-op threads (default: torch's own). On a shared or busy machine "
                                 "use 1 or the number of free cores."),
    "skip_bad_images": click.option("--skip-bad-images", is_flag=True,
                                    help="Leave unreadable images out, listed in the results, instead of stopping."),
    # the model's input (robench.models.preprocess): every model's; a spec's own ?key=value wins
    "mean": click.option("--mean", metavar="LIST",
                         help="Normalization mean of every model, one per channel or one for all, e.g. 0.1307. "
                              "Per model: SPEC?mean=0.1307&std=0.3081."),
    "std": click.option("--std", metavar="LIST", help="Normalization std of every model (as --mean)."),
    "input_size": click.option("--input-size", metavar="C,H,W",
                               help="Input of every model, e.g. 1,28,28 (C 1 gives timm models in_chans=1)."),
    "interpolation": click.option("--interpolation", type=click.Choice(["bilinear", "bicubic", "nearest"]),
                                  help="Resize interpolation of every model."),
    "crop_pct": click.option("--crop-pct", metavar="SHARE",
                             help="Center-crop share of every model's resized image, in (0, 1]."),
    "class_order": click.option("--class-order", type=click.Choice(["natural", "lexical"]), default="natural",
                                show_default=True,
                                help="How an image folder numbers its class folders: natural (timm: 1, 2, 10) or "
                                     "lexical (torchvision's ImageFolder: 1, 10, 2). A checkpoint's recorded classes "
                                     "and --classes come first."),
    "classes": click.option("--classes", type=click.Path(dir_okay=False), metavar="FILE",
                            help="Class names in index order, one a line: numbers an image folder's class folders "
                                 "(every folder must be named; over checkpoints' recorded classes)."),
}
PREPROCESS = ("mean", "std", "input_size", "interpolation", "crop_pct")  # options that make RunSpec.preprocess


def run_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add every option of a RunSpec but the suite: --data, --limit, --seed, --batch-size, --device, ..."""
    return shared_options(*_RUN_OPTIONS)(command)


def shared_options(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add these run options (by field name), declared once for every command that takes them."""
    def add(command: Callable[..., Any]) -> Callable[..., Any]:
        for name in reversed(names):
            command = _RUN_OPTIONS[name](command)
        return command

    return add


def run_spec(**options: Any) -> Any:
    """The RunSpec of a command's run options (and its suite): the five input options become one Preprocess."""
    from robench.models.preprocess import Preprocess
    from robench.run.runspec import RunSpec

    texts = {name: options.pop(name, None) for name in PREPROCESS}
    return RunSpec(preprocess=Preprocess.from_text(**texts), **options)


def out_option(what: str = ".json (full record), .csv (+ .meta.json) or .md") -> Callable[..., Any]:
    """-o/--out FILE, repeatable: one results file per format (a repeat used to keep only the last)."""
    return click.option("-o", "--out", "outs", multiple=True, type=click.Path(path_type=Path), metavar="FILE",
                        help=f"Write results: {what}. Repeatable, e.g. -o r.json -o r.md.")


def check_outs(outs: tuple[Path, ...]) -> None:
    """Fail before any work on a bad --out; one path given twice is robench.core.outputs.check_outputs' to refuse."""
    from robench.core.outputs import check_output

    for out in outs:
        check_output(out)


def run_inputs(specs: tuple[str, ...], suite_name: str | None = None,
               classes: str | None = None) -> list[tuple[str, Path | None]]:
    """The files a run reads, as (option, path): model checkpoints and factory files, a suite file, --classes.

    For robench.core.outputs.check_outputs: no output may overwrite one of them.
    """
    from robench.attacks.suite import BUILT_IN
    from robench.models import parse_spec

    inputs: list[tuple[str, Path | None]] = []
    for text in specs:
        spec = parse_spec(text)
        inputs.append(("MODEL", spec.checkpoint))
        if spec.is_factory and spec.name and spec.name.rpartition(":")[0].endswith(".py"):
            inputs.append(("MODEL", Path(spec.name.rpartition(":")[0])))
    if suite_name is not None and suite_name not in BUILT_IN:
        inputs.append(("--attacks", Path(suite_name)))
    return [*inputs, ("--classes", None if classes is None else Path(classes))]


def resume_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add --resume DIR."""
    return click.option(
        "--resume", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
        help="Keep finished batches in DIR as they complete; rerunning the same command there computes only the rest.",
    )(command)


def eps_value(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """An option's eps text in 1/255 units, read as --eps is (8, 8/255, 0.03px; 0.3 is the unit trap)."""
    from robench.attacks.suite import parse_eps

    return None if value is None else parse_eps(value, param.opts[0])


eps_unit_option = click.option(
    "--eps-unit", type=click.Choice(["1/255", "pixel"]), default="1/255", show_default=True,
    help="What a plain --eps number means: 1/255 units (8 is 8/255) or a fraction of the pixel range (0.03).")


def suite_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add --attacks NAME|FILE, --attack NAME (repeatable) and --eps LIST."""
    for option in reversed((
        click.option("--attacks", "suite_name", metavar="NAME|FILE",
                     help="Attack suite: a built-in (paper, autoattack, autoattack-fast, quick; see `robench suites`) "
                          "or a YAML file. Default: paper."),
        click.option("--attack", "attack_names", multiple=True, metavar="NAME",
                     help="Run only this attack (repeatable); suite entries keep their options."),
        click.option("--eps", "eps_text", metavar="LIST", multiple=True, callback=joined_eps,
                     help="Comma-separated eps in 1/255 units, e.g. 2,4,8, or as fractions of the pixel range: "
                          "8/255, 0.3*255, 0.03px. A plain number below 1 is refused (0.3 would be 0.3/255). "
                          "Repeatable (--eps 2 --eps 8 is 2,8). Default: the suite's (paper: 2,4,8,16)."),
        eps_unit_option,
    )):
        command = option(command)
    return command


def joined_eps(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> str | None:
    """Every --eps given, as one list: a second --eps used to replace the first without a word."""
    return ",".join(values) if values else None


def build_suite(suite_name: str | None, attack_names: tuple[str, ...], eps_text: str | None,
                cascade: bool | None = None, early_stop: bool | None = None, eps_unit: str = "1/255") -> Suite:
    """The suite the options describe; None for --cascade/--early-stop keeps the suite's own setting."""
    import dataclasses

    from robench.attacks.suite import load_suite, override, parse_eps_list

    eps = parse_eps_list(eps_text, unit=eps_unit) if eps_text is not None else None
    suite = override(load_suite(suite_name), attack_names, eps)
    if cascade is not None:
        suite = dataclasses.replace(suite, cascade=cascade)
    if early_stop is not None:
        suite = dataclasses.replace(suite, early_stop=early_stop)
    return suite

"""Options shared by the commands, declared once, and the rules every option follows.

One name, one meaning: an option name means the same thing, with the same type, metavar and
multiplicity, in every command that takes it (tests/test_cli_options.py walks the commands). A
shared option may take per-command help where its meaning shifts (train's --data is training data).

Metavars, one style: N a whole number, X a real number, EPS one eps as --eps reads it, LIST
comma-separated values, FILE a file (FILE.csv, GATES.yaml where one format is meant), DIR a folder,
NAME a name, DEVICE a device, SPEC a model spec; a choice lists its values, and a number's range is shown in
--help.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from robench.models.preprocess import INTERPOLATIONS

if TYPE_CHECKING:  # the library is imported in the commands (a fast --help)
    from robench.attacks.suite import Suite
    from robench.run.runspec import RunSpec

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

MODEL_SPEC = (  # the grammar's one description (robench.models.spec parses it); the docs take it from --help
    "[LABEL=]MODEL[@CHECKPOINT][?KEY=VALUE&...] (repeatable). LABEL names the model in tables and results "
    "(default: the name, callable or file stem). MODEL: a timm name (NAME.TAG for hub weights), a robench "
    ".safetensors file, zoo:NAME, or a factory FILE.py:CALLABLE or package.module:CALLABLE (this imports and runs "
    "that code); a text ending in .safetensors, .pth, .pth.tar, .pt or .bin, or holding a slash, is a path. "
    "CHECKPOINT: weights for MODEL, read without running code. KEY sets this model's input: mean, std, "
    "input-size (C,H,W), interpolation, crop-pct; quote the spec, e.g. 'lenet.py:LeNet@w.pth?mean=0.1307&std=0.3081'."
)

# The library's limits, repeated here because robench.run.runspec imports torch and `robench --help` must stay fast;
# tests/test_cli_options.py checks every range against the library's own checks, which stay as they are.
MAX_SEED = 2**63 - 1
MAX_BATCH = 2**20
MAX_THREADS = 1024
MAX_WORKERS = 256
PROBE_SAMPLES = 32  # robench.analysis.probes.PROBE_SAMPLES, RunSpec's default (the same test checks it)
CLASS_ORDERS = ("natural", "lexical")  # robench.data.classes.CLASS_ORDERS (the same test checks it)
AMP_CHOICES = ("bf16", "fp16")  # robench.models.accel.AMP_CHOICES (the same test checks it)
TARGET_CLASSES = ("random", "least_likely")  # robench.attacks.base.TARGET_CLASSES (the same test checks it)


def model_option(default: str) -> Decorator:
    """-m/--model SPEC (repeatable), one help text for every command; ``default`` says what no -m evaluates."""
    return click.option("-m", "--model", "models", multiple=True, metavar="SPEC", help=f"{MODEL_SPEC} {default}")


def zoo_default_text() -> str:
    """What no model means in eval and transfer-matrix, from robench.models.zoo.DEFAULT (light: no torch)."""
    from robench.models.zoo import DEFAULT

    names = [f"zoo:{name}" for name in DEFAULT]
    return f"Default: {', '.join(names[:-1])} and {names[-1]}, together (see `robench zoo list`)."


Declared = tuple[tuple[str, ...], dict[str, Any]]  # a click.option's names and settings

_RUN_OPTIONS: dict[str, Declared] = {
    "data": (("-d", "--data"), {
        "metavar": "DATA", "callback": lambda ctx, param, value: not_empty(param, value),
        "help": "digits | fashion-mnist[:DIR] | mnist:DIR | IMAGE_FOLDER | torch/NAME | hfds/NAME. "
                "Default: the dataset the models' checkpoints say they trained on, else digits."}),
    "limit": (("--limit",), {
        "type": click.IntRange(min=1), "metavar": "N",
        "help": "Use N samples of the test split, drawn by a seeded permutation. Default: all of them "
                "(digits: 360 images)."}),
    "seed": (("--seed",), {
        "type": click.IntRange(0, MAX_SEED), "default": 0, "show_default": True, "metavar": "N",
        "help": "Seed for sample choice and random starts."}),
    "batch_size": (("--batch-size",), {
        "type": click.IntRange(1, MAX_BATCH), "default": 100, "show_default": True, "metavar": "N",
        "help": "Samples per forward and backward pass; lower it if memory runs out."}),
    "device": (("--device",), {
        "default": "auto", "callback": lambda ctx, param, value: device_form(param, value), "show_default": True,
        "metavar": "DEVICE",
        "help": "auto, cpu, cuda, cuda:N or mps; under torchrun each process takes cuda:LOCAL_RANK."}),
    "pretrained": (("--pretrained",), {
        "is_flag": True, "help": "Load hub weights for NAME (needs network or a warm cache)."}),
    "workers": (("--workers",), {
        "type": click.IntRange(0, MAX_WORKERS), "default": 0, "show_default": True, "metavar": "N",
        "help": "Data-loading worker processes for image folders."}),
    "threads": (("--threads",), {
        "type": click.IntRange(1, MAX_THREADS), "metavar": "N",
        "help": "torch intra-op threads (default: torch's own). On a shared or busy machine use 1 or the number "
                "of free cores."}),
    "probe_samples": (("--probe-samples",), {
        "type": click.IntRange(1, MAX_BATCH), "default": PROBE_SAMPLES, "show_default": True, "metavar": "N",
        "help": "Run the health probes on at most the run's first N samples (the same ones at any --batch-size)."}),
    "skip_bad_images": (("--skip-bad-images",), {
        "is_flag": True, "help": "Leave unreadable images out, listed in the results, instead of stopping."}),
    # the model's input (robench.models.preprocess): every model's; a spec's own ?key=value wins
    "mean": (("--mean",), {
        "metavar": "LIST",
        "help": "Normalization mean of every model, one per channel or one for all, e.g. 0.1307. "
                "Per model: SPEC?mean=0.1307&std=0.3081."}),
    "std": (("--std",), {"metavar": "LIST", "help": "Normalization std of every model (as --mean)."}),
    "input_size": (("--input-size",), {
        "metavar": "C,H,W", "help": "Input of every model, e.g. 1,28,28 (C 1 gives timm models in_chans=1)."}),
    "interpolation": (("--interpolation",), {
        "type": click.Choice(INTERPOLATIONS), "help": "Resize interpolation of every model."}),
    "crop_pct": (("--crop-pct",), {
        "type": click.FloatRange(0, 1, min_open=True), "metavar": "X",
        "help": "Center-crop share of every model's resized image."}),
    "class_order": (("--class-order",), {
        "type": click.Choice(CLASS_ORDERS), "default": "natural", "show_default": True,
        "help": "How an image folder numbers its class folders: natural (timm: 1, 2, 10) or lexical (torchvision's "
                "ImageFolder: 1, 10, 2). A checkpoint's recorded classes and --classes come first."}),
    "classes": (("--classes",), {
        "type": click.Path(dir_okay=False), "metavar": "FILE",
        "help": "Class names in index order, one a line: numbers an image folder's class folders (every folder must "
                "be named; over checkpoints' recorded classes)."}),
    "amp": (("--amp",), {
        "type": click.Choice(AMP_CHOICES),
        "help": "Attacks and scoring under autocast to bfloat16 or float16 (fp16: CUDA only). The first batch also "
                "runs in float32; if any outcome differs the run stops and says how many. Recorded in the results."}),
    "amp_accept_changes": (("--amp-accept-changes",), {
        "is_flag": True,
        "help": "With --amp: go on when the first batch's outcomes differ from float32 (counted in the results)."}),
    "compile": (("--compile",), {
        "is_flag": True, "help": "torch.compile every model (needs a compiler; the first batches are slower). "
                                 "Recorded in the results."}),
    "channels_last": (("--channels-last/--no-channels-last",), {
        "default": None,
        "help": "Channels-last memory for the models and their inputs. Default: on CUDA only."}),
}
PREPROCESS = ("mean", "std", "input_size", "interpolation", "crop_pct")  # options that make RunSpec.preprocess

_GATE_OPTIONS: dict[str, Declared] = {  # robench gate's, which eval takes to gate its results in memory
    "baseline": (("--baseline", "baseline_path"), {
        "type": click.Path(path_type=Path), "metavar": "BASELINE.json",
        "help": "Results to compare with (never written by the gate; see 'robench baseline update')."}),
    "rules": (("--rules", "rules_path"), {
        "type": click.Path(path_type=Path), "metavar": "GATES.yaml",
        "help": "Gate rules. Default: max_drop 0.02 on top1 of every row (needs --baseline)."}),
    "junit": (("--junit",), {
        "type": click.Path(path_type=Path), "metavar": "FILE.xml",
        "help": "Write JUnit XML: one testcase per (rule, row); - for stdout (with -q: nothing else)."}),
    "summary": (("--summary",), {
        "type": click.Path(path_type=Path), "metavar": "FILE.md",
        "help": "Write a Markdown summary (e.g. $GITHUB_STEP_SUMMARY or a PR comment); - for stdout."}),
}


class NonEmptyPath(click.Path):
    """A click.Path that refuses an empty value: the OS reads '' as the current folder, never what was meant."""

    @classmethod
    def of(cls, path: click.Path) -> NonEmptyPath:
        """The same path type, refusing ''."""
        new = cls.__new__(cls)
        new.__dict__.update(path.__dict__)
        return new

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            self.fail("an empty path; give a file or folder name", param, ctx)
        return super().convert(value, param, ctx)


def refuse_empty_paths(command: click.Command) -> None:
    """Every path option and argument of ``command`` (and its subcommands) refuses an empty value."""
    for param in command.params:
        if isinstance(param.type, click.Path) and not isinstance(param.type, NonEmptyPath):
            param.type = NonEmptyPath.of(param.type)
    for sub in getattr(command, "commands", {}).values():
        refuse_empty_paths(sub)


def not_empty(param: click.Parameter, value: str | None) -> str | None:
    """An option's text, refusing an empty one (--data '' used to read the current folder)."""
    if value is not None and not value.strip():
        raise click.BadParameter("an empty value; give one or leave the option out", param=param)
    return value


def device_form(param: click.Parameter, value: str) -> str:
    """--device, checked by form before torch is imported (robench.core.devices; whether it exists: at run)."""
    from robench.core.devices import DEVICES, device_problem
    from robench.errors import FieldError

    if device_problem(value) is not None:
        raise FieldError("device", f"unknown device '{value}' for {{name}}; use {DEVICES}")
    return value


def precheck(run: dict[str, Any], eps_text: str | None = None, eps_unit: str = "1/255",
             suite_name: str | None = None) -> None:
    """Check what needs no torch before a command imports it (seconds, not the 15-45 s of torch and timm).

    The library checks the same values again when it builds its configs: one rule, met twice.
    With ``suite_name`` (--attacks) the suite may be L2, whose eps (0.5) L-inf's rule refuses: an
    eps that only an L2 suite accepts waits for the suite (robench.attacks.suite.override).
    """
    from robench.core.eps import parse_eps_list
    from robench.errors import RobenchError
    from robench.models.preprocess import Preprocess

    if eps_text is not None:
        try:
            parse_eps_list(eps_text, unit=eps_unit)
        except RobenchError:
            if suite_name is None or not _reads_as_l2(eps_text):
                raise
    texts = {name: run.get(name) for name in PREPROCESS}
    texts["crop_pct"] = None if texts["crop_pct"] is None else repr(texts["crop_pct"])
    Preprocess.from_text(**texts)


def _reads_as_l2(eps_text: str) -> bool:
    """Whether every item of an --eps list reads as an L2 eps (a plain number); a repeat is the suite's to say."""
    from robench.core.eps import parse_l2_eps, split_eps
    from robench.errors import RobenchError

    try:
        for item in split_eps(eps_text):
            parse_l2_eps(item)
    except RobenchError:
        return False
    return True


def run_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add every option of a RunSpec but the suite: --data, --limit, --seed, --batch-size, --device, ..."""
    return shared_options(*_RUN_OPTIONS)(command)


def gate_options(**changes: dict[str, Any]) -> Decorator:
    """Add robench gate's --baseline, --rules, --junit and --summary (``changes``: per-command settings)."""
    return shared_options(*_GATE_OPTIONS, **changes)


def shared_options(*names: str, **changes: dict[str, Any]) -> Decorator:
    """Add these shared options (by field name), declared once; ``changes`` gives one its per-command settings.

    Help, default and range may differ by command (train's --data is its training data); the name, metavar and
    multiplicity may not.
    """
    unknown = set(changes) - set(names)
    if unknown:
        raise ValueError(f"settings for options not added: {', '.join(sorted(unknown))}")

    def add(command: Callable[..., Any]) -> Callable[..., Any]:
        for name in reversed(names):
            decls, attrs = {**_RUN_OPTIONS, **_GATE_OPTIONS}[name]
            command = click.option(*decls, **{**attrs, **changes.get(name, {})})(command)
        return command

    return add


class RobenchCommand(click.Command):
    """A command whose renamed options keep their old names for one release: hidden, with a one-line warning.

    ``renamed`` maps each old name to the new option's parameter name, e.g. {"--input-size": "image_size"}
    for train's --image-size. The old name takes the new option's type, so it is checked the same way.
    """

    def __init__(self, *args: Any, renamed: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        targets = {p.name: p for p in self.params}
        for old, name in (renamed or {}).items():
            new = targets[name]
            assert isinstance(new, click.Option) and not new.is_flag, f"{old}: only a value option can be renamed"
            self.params.append(OldName(old, new))

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rest = super().parse_args(ctx, args)
        for param in self.params:
            if isinstance(param, OldName):
                param.pass_on(ctx)
        return rest


class OldName(click.Option):
    """A renamed option's old name: hidden from --help; given, it warns once and its value goes to the new one."""

    def __init__(self, old: str, new: click.Option) -> None:
        super().__init__([old, f"old_{new.name}"], type=new.type, multiple=new.multiple, nargs=new.nargs,
                         callback=new.callback, metavar=new.metavar, hidden=True)
        self.old, self.new = old, new

    def pass_on(self, ctx: click.Context) -> None:
        """Move the old name's value to the new option (parsed): given both, it is a usage error."""
        assert self.name is not None and self.new.name is not None
        value = ctx.params.pop(self.name, None)
        if ctx.get_parameter_source(self.name) is not ParameterSource.COMMANDLINE:
            return
        new = max(self.new.opts, key=len)
        if ctx.get_parameter_source(self.new.name) is ParameterSource.COMMANDLINE:
            raise click.UsageError(f"{self.old} is the old name of {new}; give {new} only", ctx)
        click.echo(f"robench: warning: {self.old} is deprecated; use {new}", err=True)
        ctx.params[self.new.name] = value
        ctx.set_parameter_source(self.new.name, ParameterSource.COMMANDLINE)


def say(message: str) -> None:
    """A library warning on stderr; one naming fields (robench.errors.FieldNote) names the command's options instead."""
    from robench.errors import FieldNote
    from robench.render.console import warn

    from .main import option  # here, not at the top: main imports the commands, and they import this module

    if isinstance(message, FieldNote):
        ctx = click.get_current_context(silent=True)
        message = message.named(lambda field: option(field, ctx.command if ctx is not None else None))
    warn(message)


def option_of(command: click.Command | None, field: str) -> str | None:
    """The option of ``command`` that sets a config field (eval's --baseline sets baseline_path); None if none."""
    for param in command.params if command is not None else ():
        if isinstance(param, click.Option) and not param.hidden and param.name == field:
            return max(param.opts, key=len)
    return None


def run_spec(**options: Any) -> RunSpec:
    """The RunSpec of a command's run options (and its suite): the five input options become one Preprocess."""
    from robench.models.preprocess import Preprocess
    from robench.run.runspec import RunSpec

    texts = {name: options.pop(name, None) for name in PREPROCESS}
    if texts["crop_pct"] is not None:  # a number (it has a range); Preprocess reads text, as a spec's ?crop-pct=
        texts["crop_pct"] = repr(texts["crop_pct"])
    return RunSpec(preprocess=Preprocess.from_text(**texts), **options)


def out_option(what: str = ".json (full record), .csv (+ .meta.json) or .md") -> Callable[..., Any]:
    """-o/--out FILE, repeatable: one results file per format (a repeat used to keep only the last)."""
    return click.option("-o", "--out", "outs", multiple=True, type=click.Path(path_type=Path), metavar="FILE",
                        help=f"Write results: {what}. Repeatable, e.g. -o r.json -o r.md.")


def check_outs(outs: tuple[Path, ...]) -> None:
    """Fail before any work on a bad --out; one path given twice is robench.core.outputs.check_outputs' to refuse."""
    from robench.core.outputs import check_output

    for out in outs:
        check_output(out, regular=True)


def run_inputs(specs: tuple[str, ...], suite_name: str | None = None,
               classes: str | None = None, data: str | None = None) -> list[tuple[str, Path | None]]:
    """The files a run reads, as (option, path): model checkpoints and factory files, a suite file, --classes,
    and the folder of --data when it is one (an image folder, mnist:DIR, fashion-mnist:DIR).

    For robench.core.outputs.check_outputs: no output may overwrite one of them, nor land in the data folder.
    """
    from robench.attacks.suite import BUILT_IN
    from robench.data.open import is_folder
    from robench.models import parse_spec

    inputs: list[tuple[str, Path | None]] = []
    for text in specs:
        spec = parse_spec(text)
        inputs.append(("MODEL", spec.checkpoint))
        if spec.is_factory and spec.name and spec.name.rpartition(":")[0].endswith(".py"):
            inputs.append(("MODEL", Path(spec.name.rpartition(":")[0])))
    if suite_name is not None and suite_name not in BUILT_IN:
        inputs.append(("--attacks", Path(suite_name)))
    if data is not None and ":" in data and data.startswith(("mnist:", "fashion-mnist:")):
        inputs.append(("--data", Path(data.partition(":")[2])))
    elif data is not None and is_folder(data):
        inputs.append(("--data", Path(data)))
    return [*inputs, ("--classes", None if classes is None else Path(classes))]


def target_class_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add --target-class random|least_likely: a targeted run (RunSpec.target_class)."""
    return click.option(
        "--target-class", type=click.Choice(TARGET_CLASSES),
        help="Targeted attacks: every attack steps toward a class per sample, random (fixed by --seed and the "
             "sample, never its label) or least_likely (the source's lowest-scored class on the clean image, over "
             "all classes as in the paper). Attacks that can: fgsm, bim, pgd. Adds targeted_success_rate.",
    )(command)


def resume_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add --resume DIR."""
    return click.option(
        "--resume", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
        help="Keep finished batches in DIR as they complete; rerunning the same command there computes only the rest.",
    )(command)


def survivor_check_option(where: str) -> Callable[..., Any]:
    """--survivor-check N, one definition for eval and transfer-matrix; ``where``: the survivors it re-attacks."""
    return click.option(
        "--survivor-check", type=int, default=8, show_default=True, metavar="N",
        help=f"When a cascade suite takes shortcuts (e.g. autoattack-malt): re-attack the first N survivors of "
             f"{where} with the full autoattack suite, and flag any it fools (0: off).")


def eps_value(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """An option's eps text in 1/255 units, read as --eps is (8, 8/255, 0.03px; 0.3 is the unit trap)."""
    from robench.core.eps import parse_eps

    return None if value is None else parse_eps(value, param.opts[0])


EPS_UNITS = ("1/255", "pixel")  # robench.attacks.suite.parse_eps's units

eps_unit_option = click.option(
    "--eps-unit", type=click.Choice(EPS_UNITS), default="1/255", show_default=True,
    help="What a plain --eps number means: 1/255 units (8 is 8/255) or a fraction of the pixel range (0.03).")


def suite_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add --attacks NAME|FILE, --attack NAME (repeatable) and --eps LIST."""
    for option in reversed((
        click.option("--attacks", "suite_name", metavar="NAME|FILE", callback=lambda c, p, v: not_empty(p, v),
                     help="Attack suite: a built-in (paper, autoattack, autoattack-fast, autoattack-malt, "
                          "autoattack-l2, quick, transfer; see `robench suites`) or a YAML file. Default: paper."),
        click.option("--attack", "attack_names", multiple=True, metavar="NAME",
                     help="Run only this attack (repeatable); suite entries keep their options."),
        click.option("--eps", "eps_text", metavar="LIST", multiple=True, callback=joined_eps,
                     help="Comma-separated eps in 1/255 units, e.g. 2,4,8, or as fractions of the pixel range: "
                          "8/255, 0.3*255, 0.03px. A plain number below 1 is refused (0.3 would be 0.3/255). "
                          "Under an L2 suite (autoattack-l2, norm: l2) eps is the L2 norm in [0, 1] pixels, as "
                          "written: 0.5. "
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

    from robench.attacks.suite import load_suite, override
    from robench.core.eps import split_eps

    eps = split_eps(eps_text) if eps_text is not None else None
    suite = override(load_suite(suite_name), attack_names, eps, eps_unit)
    if cascade is not None:
        suite = dataclasses.replace(suite, cascade=cascade)
    if early_stop is not None:
        suite = dataclasses.replace(suite, early_stop=early_stop)
    return suite


def refuse_overwrite(outputs: list[tuple[str, Path | None]]) -> None:
    """--dry-run writes nothing: refuse, before any work, an output it would leave standing as if it were new."""
    from robench.errors import RobenchError

    for option, path in outputs:
        if path is not None and str(path) != "-" and path.exists():
            raise RobenchError(f"--dry-run writes no results, but {option} {path} exists and the real run would "
                               f"overwrite it; move it away or leave out {option}")


def print_dry_run(cfg: Any) -> None:
    """Run ``robench.run.dryrun``'s dry run on an EvalConfig or a TransferConfig and print its table."""
    from robench.render.console import console
    from robench.render.tables import dry_run_table
    from robench.run.dryrun import dry_run, dry_run_transfer
    from robench.run.transfer import TransferConfig

    rows = dry_run_transfer(cfg, say) if isinstance(cfg, TransferConfig) else dry_run(cfg, say)
    console().print(dry_run_table(rows, rows.attrs["device"]))
    if "store" in rows.attrs:
        console().print(rows.attrs["store"])

"""One name, one meaning on the command line: every command's options, walked together.

An option name has one type, metavar and multiplicity in every command that takes it; its
ranges and choices agree with the library's own checks; renamed options keep their old
names for one release, hidden, with a one-line warning.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from robench.cli.main import main, option
from robench.errors import FieldError

# Deliberate differences between commands, as (option, aspect). The test fails on any other difference,
# and on an entry here that no longer differs.
DELIBERATE = {
    # -o/--out is where a command's output goes: the evaluating commands write one results file per format
    # (-o r.json -o r.md); train writes one checkpoint, report one document, schema one file.
    ("--out", "multiplicity"),
    # --batch-size: training needs two samples per batch (batch-norm statistics, two per process under torchrun)
    # and defaults to 64; evaluating takes a batch of one.
    ("--batch-size", "type"),
}
RENAMED = [  # (command, old name, new name, a value): the old names work for one release
    ("train", "--input-size", "--image-size", "16"),
    ("train", "--attack", "--train-attack", "fgsm"),
    ("eval", "--gate", "--rules", "gates.yaml"),
]
STYLE = re.compile(r"[A-Z][A-Z,=|]*(\.[a-z]+)?|\[.+\]")  # FILE, C,H,W, NAME|FILE, FILE.csv, GATES.yaml; [a|b] choices


def _commands(group: click.Group = main, prefix: str = "") -> dict[str, click.Command]:
    """Every command of the group, sub-commands too ("baseline update"), by its path."""
    found: dict[str, click.Command] = {}
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            found |= _commands(command, f"{path} ")
        else:
            found[path] = command
    return found


def _options(command: click.Command) -> list[click.Option]:
    """The options --help shows (the hidden ones are old names, tested below)."""
    return [p for p in command.params if isinstance(p, click.Option) and not p.hidden]


def _metavar(param: click.Option, command: click.Command) -> str:
    ctx = click.Context(command)
    try:
        return param.make_metavar(ctx)
    except TypeError:  # click < 8.2 takes no context
        return param.make_metavar()  # type: ignore[call-arg]


def _aspects(param: click.Option, command: click.Command) -> dict[str, Any]:
    """What must agree between two commands giving an option the same name."""
    kind = param.type
    detail: Any = None
    if isinstance(kind, click.Choice):
        detail = tuple(kind.choices)
    elif isinstance(kind, (click.IntRange, click.FloatRange)):
        detail = (kind.min, kind.max, kind.min_open, kind.max_open)
    elif isinstance(kind, click.Path):
        detail = (kind.file_okay, kind.dir_okay, kind.exists)
    return {"type": (type(kind).__name__, detail), "metavar": _metavar(param, command),
            "multiplicity": (param.multiple, param.nargs, param.is_flag, param.count)}


def _by_name() -> dict[str, dict[str, dict[str, Any]]]:
    """Long option name -> command -> its aspects."""
    table: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for path, command in _commands().items():
        for param in _options(command):
            for name in (n for n in param.opts + param.secondary_opts if n.startswith("--")):
                table[name][path] = _aspects(param, command)
    return table


def test_the_walk_sees_every_command() -> None:
    assert {"eval", "transfer-matrix", "leak-check", "train", "gate", "report", "schema", "suites",
            "baseline update", "zoo list"} <= set(_commands())
    assert {"--model", "--out", "--batch-size", "--rules", "--image-size"} <= set(_by_name())


def test_an_option_name_has_one_type_metavar_and_multiplicity() -> None:
    differing = set()
    for name, commands in _by_name().items():
        for aspect in ("type", "metavar", "multiplicity"):
            if len({repr(a[aspect]) for a in commands.values()}) > 1:
                differing.add((name, aspect))
    assert differing - DELIBERATE == set(), "one name, one meaning: rename one, or allow it in DELIBERATE and say why"
    assert DELIBERATE - differing == set(), "these no longer differ: take them out of DELIBERATE"


def test_a_short_name_stands_for_one_long_name() -> None:
    longs: dict[str, set[str]] = defaultdict(set)
    for command in _commands().values():
        for param in _options(command):
            for short in (n for n in param.opts if not n.startswith("--")):
                longs[short] |= {n for n in param.opts if n.startswith("--")}
    assert {s: ls for s, ls in longs.items() if len(ls) != 1} == {}
    assert longs["-o"] == {"--out"} and longs["-m"] == {"--model"}


def test_one_metavar_style() -> None:
    """N for whole numbers, X for real numbers, a word for the rest (FILE, DIR, LIST, ...): never Click's TEXT,
    INTEGER or FLOAT RANGE."""
    for path, command in _commands().items():
        for param in _options(command):
            if param.is_flag or param.count:
                continue
            shown = _metavar(param, command)
            where = f"{path} {param.opts[-1]}: {shown}"
            assert STYLE.fullmatch(shown) and shown not in ("TEXT", "INTEGER", "FLOAT", "PATH"), where
            if isinstance(param.type, click.types.IntParamType):
                assert shown == "N", where
            elif isinstance(param.type, click.types.FloatParamType):
                assert shown == "X", where


# ---------------------------------------------------------------- ranges and choices agree with the library


def _run_spec(field: str, value: Any) -> None:
    from robench.run.runspec import RunSpec

    RunSpec(**{field: value})


def _preprocess(field: str, value: Any) -> None:
    from robench.models.preprocess import Preprocess

    Preprocess(**{field: value})


def _eval_config(field: str, value: Any) -> None:
    from robench.run.evaluate import EvalConfig

    EvalConfig(**{field: value})


def _leak_config(field: str, value: Any) -> None:
    from robench.run.leak import LeakConfig

    LeakConfig(**{field: value})


def _train_config(field: str, value: Any) -> None:
    from robench.models.recipe import TrainConfig

    TrainConfig(**{"lr": 1e-9, "weight_decay": 0.0, field: value}).validate()  # lr * weight_decay stays below 1


LIBRARY = {  # (command, parameter name) -> the library check behind the option's range
    **{(c, f): _run_spec for c in ("eval", "transfer-matrix", "leak-check")
       for f in ("limit", "seed", "batch_size", "workers", "threads", "probe_samples")},
    **{(c, "crop_pct"): _preprocess for c in ("eval", "transfer-matrix", "leak-check")},
    ("eval", "clean_ref_tol"): _eval_config,
    ("leak-check", "alpha"): _leak_config,
    ("leak-check", "margin"): _leak_config,
    ("train", "threads"): _run_spec,  # train checks --threads as RunSpec does
    **{("train", f): _train_config for f in ("limit", "seed", "batch_size", "adv_fraction", "lam", "steps", "epochs",
                                             "lr", "weight_decay", "image_size", "val_fraction")},
}


def _accepted(check: Any, field: str, value: Any) -> bool:
    try:
        check(field, value)
    except FieldError as e:
        assert e.field == field
        return False
    return True


def _probes(kind: click.IntRange | click.FloatRange) -> list[tuple[Any, bool]]:
    """(value, accepted by the range) at, just inside and just beyond each bound; large without a maximum.

    Every range here has a minimum: a count or a share is never negative.
    """
    whole = isinstance(kind, click.IntRange)
    out: list[tuple[Any, bool]] = [] if kind.max is not None else [(10**6 if whole else 1e3, True)]
    for bound, is_open, outward in ((kind.min, kind.min_open, -1), (kind.max, kind.max_open, 1)):
        if bound is None:
            continue
        beyond = bound + outward if whole else math.nextafter(bound, outward * math.inf)
        inside = bound - outward if whole else math.nextafter(bound, -outward * math.inf)
        out += [(bound, not is_open), (beyond, False), (inside, True)]
    return out


def test_every_range_is_the_librarys() -> None:
    """A range on the command line refuses what the library refuses, no more: the limits are written twice."""
    checked = set()
    for path, command in _commands().items():
        for param in _options(command):
            if not isinstance(param.type, (click.IntRange, click.FloatRange)):
                continue
            assert param.name is not None
            check = LIBRARY.get((path, param.name))
            assert check is not None, f"{path} {param.opts[-1]}: which library check is this range's? add it"
            assert param.type.min is not None, f"{path} {param.opts[-1]}: a range without a minimum"
            for value, ok in _probes(param.type):
                assert _accepted(check, param.name, value) == ok, (path, param.opts[-1], value, ok)
            checked.add((path, param.name))
    assert checked == set(LIBRARY)


def _choices(path: str, name: str) -> tuple[str, ...]:
    param = next(p for p in _commands()[path].params if name in p.opts)
    assert isinstance(param.type, click.Choice)
    return tuple(param.type.choices)


def test_choices_are_the_librarys_lists() -> None:
    from robench.attacks.suite import parse_eps
    from robench.data import CLASS_ORDERS
    from robench.models.preprocess import INTERPOLATIONS
    from robench.models.recipe import EPS_DISTS, LABELS, TRAIN_ATTACKS

    assert _choices("train", "--train-attack") == TRAIN_ATTACKS
    assert _choices("train", "--label") == LABELS
    assert _choices("train", "--eps-dist") == EPS_DISTS
    for path in ("eval", "transfer-matrix", "leak-check", "train"):
        assert _choices(path, "--class-order") == CLASS_ORDERS
    assert _choices("eval", "--interpolation") == INTERPOLATIONS
    from robench.models.accel import AMP_CHOICES

    for path in ("eval", "transfer-matrix", "leak-check"):
        assert _choices(path, "--amp") == AMP_CHOICES
    from robench.attacks.base import TARGET_CLASSES

    assert _choices("transfer-matrix", "--target-class") == TARGET_CLASSES
    units = _choices("eval", "--eps-unit")
    assert units == ("1/255", "pixel")  # parse_eps reads a plain number in pixels with unit "pixel", else /255
    assert (parse_eps("8", unit="1/255"), parse_eps("0.03", unit="pixel")) == pytest.approx((8, 7.65))


def test_probe_samples_default_is_the_librarys() -> None:
    """--probe-samples' default is written twice (the CLI's --help must not import torch): both say 32."""
    from robench.analysis.probes import PROBE_SAMPLES
    from robench.cli import options
    from robench.run.runspec import RunSpec

    assert options.PROBE_SAMPLES == PROBE_SAMPLES == RunSpec().probe_samples == 32
    for path in ("eval", "transfer-matrix", "leak-check"):
        assert next(p for p in _commands()[path].params if p.name == "probe_samples").default == PROBE_SAMPLES


CLICK_REFUSES = [  # a bad value of an option with a choice or a range: Click's one line, exit 2, before any work
    ("eval", "--crop-pct", "0", "0.0 is not in the range 0<x<=1"),
    ("eval", "--workers", "257", "257 is not in the range 0<=x<=256"),
    ("eval", "--seed", "-1", "-1 is not in the range 0<=x<=9223372036854775807"),
    ("eval", "--interpolation", "cubic", "'cubic' is not one of 'bilinear', 'bicubic', 'nearest'"),
    ("eval", "--clean-ref-tol", "1.5", "1.5 is not in the range 0<=x<=1"),
    ("transfer-matrix", "--limit", "0", "0 is not in the range x>=1"),
    *((c, "--probe-samples", v, f"{v} is not in the range 1<=x<=1048576") for c in ("eval", "transfer-matrix",
                                                                                    "leak-check") for v in ("-1", "0")),
    ("leak-check", "--alpha", "1", "1.0 is not in the range 0<x<1"),
    ("leak-check", "--margin", "-0.1", "-0.1 is not in the range 0<=x<=1"),
    ("train", "--label", "truth", "'truth' is not one of 'true', 'predicted'"),
    ("train", "--image-size", "7", "7 is not in the range 8<=x<=4096"),
]


@pytest.mark.parametrize(("command", "name", "value", "needle"), CLICK_REFUSES, ids=[f"{c[0]} {c[1]}" for c in
                                                                                      CLICK_REFUSES])
def test_a_bad_choice_or_range_is_one_line_and_exit_2(command: str, name: str, value: str, needle: str,
                                                      tmp_path: Path) -> None:
    out = tmp_path / ("m.safetensors" if command == "train" else "r.json")
    result = CliRunner().invoke(main, [command, name, value, "--out", str(out)])
    assert result.exit_code == 2, result.stderr
    assert result.stderr.splitlines() == [f"robench: error: Invalid value for '{name}': {needle}. "
                                          f"(see 'main {command} --help')"]
    assert result.stdout == "" and not list(tmp_path.iterdir())


# ---------------------------------------------------------------- renamed options: old names for one release


def _parsed(command: str, args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[dict[str, Any], list[str]]:
    """The values the command would run with, and the lines it wrote on stderr."""
    ctx = _commands()[command].make_context(command, [*args, "--out", "m.safetensors"])
    return ctx.params, capsys.readouterr().err.splitlines()


@pytest.mark.parametrize(("command", "old", "new", "value"), RENAMED, ids=[r[1] for r in RENAMED])
def test_an_old_name_works_and_warns_once(command: str, old: str, new: str, value: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with_new, quiet = _parsed(command, [new, value], capsys)
    with_old, said = _parsed(command, [old, value], capsys)
    assert with_old == with_new and quiet == []
    assert said == [f"robench: warning: {old} is deprecated; use {new}"]
    twice, said = _parsed(command, [old, value, old, value], capsys)
    assert twice == with_new and len(said) == 1


@pytest.mark.parametrize(("command", "old", "new", "value"), RENAMED, ids=[r[1] for r in RENAMED])
def test_an_old_name_is_hidden_from_help(command: str, old: str, new: str, value: str) -> None:
    text = CliRunner().invoke(main, [command, "--help"]).stdout
    assert re.search(rf"(?<![\w-]){re.escape(new)}(?![\w-])", text)
    assert not re.search(rf"(?<![\w-]){re.escape(old)}(?![\w-])", text), text


@pytest.mark.parametrize(("command", "old", "new", "value"), RENAMED, ids=[r[1] for r in RENAMED])
def test_an_old_name_beside_its_new_one_is_one_line_and_exit_2(command: str, old: str, new: str, value: str) -> None:
    result = CliRunner().invoke(main, [command, old, value, new, value, "--out", "never.safetensors"])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"robench: error: {old} is the old name of {new}; give {new} only "
                                          f"(see 'main {command} --help')"]


@pytest.mark.slow
def test_train_runs_with_the_old_names(tmp_path: Path) -> None:
    from robench.models.checkpoint import read_metadata

    out = tmp_path / "m.safetensors"
    result = CliRunner().invoke(main, ["train", "--attack", "none", "--input-size", "8", "--epochs", "1", "--limit",
                                       "16", "--batch-size", "8", "-q", "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    warnings = sorted(ln for ln in result.stderr.splitlines() if "warning" in ln)
    assert warnings == ["robench: warning: --attack is deprecated; use --train-attack",
                        "robench: warning: --input-size is deprecated; use --image-size"]
    recipe = read_metadata(out)["recipe"]
    assert (recipe["attack"], recipe["input_size"]) == ("none", 8)


def test_a_field_error_names_the_commands_own_option() -> None:
    commands = _commands()
    assert option("image_size", commands["train"]) == "--image-size"
    assert option("train_attack", commands["train"]) == "--train-attack"
    assert option("input_size", commands["eval"]) == "--input-size"
    assert option("clean_refs", commands["eval"]) == "--clean-ref"
    assert option("health_probes", commands["eval"]) == "--no-health"  # no option of that name: the table's
    assert option("batch_size") == "--batch-size"


# ---------------------------------------------------------------- help


def test_shared_options_take_per_command_help() -> None:
    """train's --data and --seed once said what the evaluating commands' do ("the models' checkpoints")."""
    def help_of(command: str, name: str) -> str:
        param = next(p for p in _commands()[command].params if name in p.opts)
        return str(param.help)

    for name in ("--data", "--limit", "--seed", "--class-order", "--classes"):
        assert help_of("train", name) != help_of("eval", name), name
    assert "checkpoints say" in help_of("eval", "--data") and "checkpoints say" not in help_of("train", "--data")
    assert "weights" in help_of("train", "--seed") and "weights" not in help_of("eval", "--seed")
    assert help_of("eval", "--rules") != help_of("gate", "--rules")


def test_every_help_page_imports_no_torch() -> None:
    """`robench COMMAND --help` stays fast: the options' choices and ranges come from light modules."""
    code = ("import sys\nfrom click.testing import CliRunner\nfrom robench.cli.main import main\n"
            "for c in ('eval', 'transfer-matrix', 'leak-check', 'train', 'gate', 'report', 'schema', 'suites', "
            "'baseline', 'zoo'):\n    assert CliRunner().invoke(main, [c, '--help']).exit_code == 0, c\n"
            "print(sorted(m for m in ('torch', 'timm') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"

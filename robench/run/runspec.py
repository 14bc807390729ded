"""What every evaluating command shares: the run specification, and opening its data and models.

``RunSpec`` is composed into ``EvalConfig``, ``TransferConfig`` (and, through EvalConfig,
``LeakConfig``), so a field means the same thing, is checked the same way and is written
to results files the same way in every command.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robench.analysis import health, probes
from robench.attacks.base import TARGET_CLASSES, TargetClass
from robench.attacks.suite import Suite, check_targeted, load_suite
from robench.core.devices import device_problem
from robench.core.distributed import Dist, resolve_device
from robench.core.fields import Rule, check
from robench.data import (
    CLASS_ORDERS,
    Source,
    channel_note,
    class_list_problem,
    few_pair,
    is_folder,
    open_source,
    read_class_list,
)
from robench.data.images import ImageSource
from robench.engine import Participant, Status
from robench.errors import FieldError, FieldNote, RobenchError
from robench.models import LoadedModel, ModelSpec, checkpoint_classes, checkpoint_dataset, load_model, parse_spec
from robench.models.accel import AMP_CHOICES, accelerate, amp_problem, channels_last_default, compile_problem
from robench.models.preprocess import Preprocess
from robench.models.zoo import DEFAULT
from robench.results.provenance import plain_config

MAX_SEED = 2**63 - 1
MAX_BATCH = 2**20  # a batch above the data size is one batch of all of it; beyond this it is surely a typo
MAX_THREADS = 1024  # torch takes a C int, and no machine robench runs on has more cores
MAX_WORKERS = 256  # each a process holding a copy of the loader
RUN_FIELDS: dict[str, Rule] = {  # every field's type is checked before any range (robench.core.fields)
    "data": Rule(str | None, "text such as digits, or None", test=lambda d: "not be empty" if d == "" else None),
    "suite": Rule(Suite, "a Suite (robench.attacks.suite.load_suite)"),
    "limit": Rule(int | None, "a whole number or None", low=1, must="be a positive number"),
    "seed": Rule(int, "a whole number", low=0, high=MAX_SEED, must="be a whole number in [0, 2**63 - 1]"),
    "batch_size": Rule(int, "a whole number", low=1, high=MAX_BATCH, must=f"be a whole number in [1, {MAX_BATCH}]"),
    "device": Rule(str, "text such as auto, cpu or cuda", test=device_problem),
    "pretrained": Rule(bool, "True or False"),
    "workers": Rule(int, "a whole number", low=0, high=MAX_WORKERS, must=f"be a whole number in [0, {MAX_WORKERS}]"),
    "skip_bad_images": Rule(bool, "True or False"),
    "health_probes": Rule(bool, "True or False"),
    "probe_samples": Rule(int, "a whole number", low=1, high=MAX_BATCH, must=f"be a whole number in [1, {MAX_BATCH}]"),
    "threads": Rule(int | None, "a whole number or None", low=1, high=MAX_THREADS,
                    must=f"be a whole number in [1, {MAX_THREADS}]"),
    "class_order": Rule(str, "natural or lexical", choices=CLASS_ORDERS),
    "classes": Rule(str | None, "the path of a class-list file, or None"),
    "preprocess": Rule(Preprocess, "a Preprocess (robench.models.preprocess)"),
    "amp": Rule(str | None, "bf16, fp16 or None", choices=AMP_CHOICES),
    "amp_accept_changes": Rule(bool, "True or False"),
    "compile": Rule(bool, "True or False"),
    "channels_last": Rule(bool | None, "True, False or None (on CUDA only)"),
    "target_class": Rule(str | None, "random, least_likely or None", choices=TARGET_CLASSES),
}


def model_texts_problem(models: tuple[Any, ...]) -> str | None:
    """What a tuple of model specs breaks: each must be non-empty text ('resnet18', not a bare string or 5)."""
    bad = next((m for m in models if not isinstance(m, str) or not m.strip()), None)
    return None if bad is None else "hold model specs as text, e.g. ('resnet18',)"


DEFAULT_DATA = "digits"  # without --data and without a dataset the checkpoints agree on

@dataclass(frozen=True)
class RunSpec:
    """Data, attacks and how to run them: everything but the models that decides an evaluation's numbers."""

    data: str | None = None  # None: the dataset the models' checkpoints say they trained on, else digits
    suite: Suite = field(default_factory=load_suite)
    limit: int | None = None  # None: every sample of the split
    seed: int = 0  # sample choice and random starts
    batch_size: int = 100
    device: str = "auto"
    pretrained: bool = False
    workers: int = 0
    skip_bad_images: bool = False  # leave unreadable images out (recorded in the results) instead of failing
    health_probes: bool = True  # probe each model on the first samples (analysis.probes); results checked anyway
    probe_samples: int = probes.PROBE_SAMPLES  # the probes see this many of the run's first samples, any batch size
    threads: int | None = None  # torch intra-op threads; None leaves torch's own setting alone
    class_order: str = "natural"  # image folders' class indices: natural (timm's 1, 2, 10) or lexical (torchvision's)
    classes: str | None = None  # a file of class names in index order; over checkpoints' lists and class_order
    preprocess: Preprocess = field(default_factory=Preprocess)  # every model's input overrides (specs' own win)
    amp: str | None = None  # bf16 or fp16: attacks and scoring under autocast, checked on the first batch
    amp_accept_changes: bool = False  # run on when amp changed outcomes of the first batch (recorded)
    compile: bool = False  # torch.compile every model
    channels_last: bool | None = None  # None: on CUDA only (robench.models.accel.channels_last_default)
    # a targeted run: each sample's class the attacks aim at (robench.attacks.base.goal_classes); None: untargeted
    target_class: TargetClass | None = None

    def __post_init__(self) -> None:
        check(self, RUN_FIELDS)
        check_targeted(self.suite, self.target_class)

    def describe(self) -> dict[str, Any]:
        """Plain-data form for result files."""
        return plain_config(self)


@dataclass
class Opened:
    """A run's data and models, loaded and checked, on the run's device."""

    source: Source
    models: list[LoadedModel]
    device: torch.device
    data: str = DEFAULT_DATA  # the data spec the run opened (RunSpec.data, or the checkpoints' dataset)
    fast: list[nn.Module] | None = None  # each model as RunSpec's amp, compile and channels_last ask; None: as is
    precision: dict[str, Any] = field(default_factory=dict)  # what results record of them (``precision_record``)

    def participants(self, exact: bool = False) -> list[Participant]:
        """The models as the engine sees them; ``exact``: in float32, not compiled, whatever the run asks."""
        modules = [m.module for m in self.models] if exact or self.fast is None else self.fast
        return [Participant(m.spec.label, f, m.input) for m, f in zip(self.models, modules, strict=True)]


def open_run(run: RunSpec, specs: tuple[str, ...], dist: Dist, warn: Callable[[str], None] | None = None) -> Opened:
    """Seed, device, data and models of a run; an empty ``specs`` gives the zoo's default pair.

    ``warn`` hears about things that are allowed but rarely meant, such as random weights.
    """
    torch.manual_seed(run.seed)
    if run.threads is not None:  # a process setting: on a busy machine torch's default can be many times slower
        torch.set_num_threads(run.threads)
    device = dist.device if dist.is_distributed else resolve_device(run.device)
    check_device_settings(run, device)
    parsed = parse_specs(specs)
    classes, classes_from = run_classes(run, parsed)
    data, notes = run_data(run.data, parsed)  # notes are said once everything has opened: a failed run says why
    try:
        source = open_source(data, "test", run.limit, run.seed, run.workers, run.skip_bad_images,
                             class_order=run.class_order, classes=classes, classes_from=classes_from,
                             warn=notes.append)
    except FieldError:
        raise
    except RobenchError as e:
        if run.data is not None or data == DEFAULT_DATA:
            raise
        raise FieldError("data", f"{e} (the models' checkpoints say they trained on {data}; pass {{name}} to "
                                 f"evaluate on other data)") from None
    run.suite.check_classes(source.num_classes, source.name)
    models = load_models(parsed, source, run.pretrained, device, run.preprocess)
    for m in models:
        notes += [*m.notes, *filter(None, [channel_note(m.spec.label, m.input.channels, source)])]
        if m.weights == "random":
            notes.append(FieldNote(f"model '{m.spec.label}' has random weights (no checkpoint and no "
                                   f"{{pretrained}})", "pretrained"))
    if warn is not None and dist.is_main:
        for note in notes:
            warn(note)
    if isinstance(source, ImageSource):  # pinned host memory lets the copy to the GPU run beside the work
        source.pin_memory = device.type == "cuda"
    channels_last = channels_last_default(device) if run.channels_last is None else run.channels_last
    fast = [accelerate(m.module, run.amp, channels_last, run.compile) for m in models]
    record = {"amp": run.amp, "compile": run.compile, "channels_last": channels_last}
    return Opened(source, models, device, data, fast, record)


def check_device_settings(run: RunSpec, device: torch.device) -> None:
    """Refuse, before any work, an amp or compile setting this device or the installed torch cannot do."""
    problem = amp_problem(run.amp, device)
    if problem:
        raise FieldError("amp", f"{{name}} {run.amp} cannot run on {device}: {problem}")
    problem = compile_problem(device) if run.compile else None
    if problem:
        raise FieldError("compile", f"{{name}} cannot run on {device}: {problem}")


def run_data(data: str | None, parsed: list[ModelSpec]) -> tuple[str, list[str]]:
    """The data to evaluate on, and notes: where it came from, and each model whose checkpoint says other data.

    Without ``data`` the run takes the dataset the checkpoints record (their test split), if
    they agree, and says so; else digits: a Fashion-MNIST model ran on digits at 22% with no
    word. A model trained on other data than the run's gets a note naming both; when an image
    folder is involved the note allows that it may hold the same images.
    """
    trained = {p.label: d for p in parsed if (d := checkpoint_dataset(p)) is not None}
    notes: list[str] = []
    if data is None:
        known = list(dict.fromkeys(trained.values()))  # in model order
        if len(known) == 1:
            data = known[0]
            if data != DEFAULT_DATA:  # the zoo's own: nothing a user would not expect
                notes.append(FieldNote(f"evaluating on {data} (its test split), the dataset the checkpoints of "
                                       f"{_labels(trained)} record; {{data}} overrides", "data"))
        else:
            data = DEFAULT_DATA
            if known:
                notes.append(FieldNote(f"the checkpoints record different datasets ({', '.join(known)}), so the "
                                       f"run takes the default, {DEFAULT_DATA}; pass {{data}}, or evaluate them in "
                                       f"separate runs", "data"))
    for label, d in trained.items():
        if d != data:
            maybe = ", unless the two hold the same images" if is_folder(d) or is_folder(data) else ""
            notes.append(FieldNote(f"model '{label}' was trained on {d} (its checkpoint says) but the data is "
                                   f"{data}: its numbers are for data it never learned{maybe} (pass {{data}} {d})",
                                   "data"))
    return data, notes


def _labels(trained: dict[str, str]) -> str:
    labels = [f"'{label}'" for label in trained]
    return "model " + labels[0] if len(labels) == 1 else "models " + ", ".join(labels)


def run_classes(run: RunSpec, parsed: list[ModelSpec]) -> tuple[list[str] | None, str]:
    """The class list that numbers the data's classes, and whose it is: --classes, else the checkpoints' records.

    None leaves the numbering to ``run.class_order``. A checkpoint's own list outranks a sort
    order because it names what each output index means; two models of different lists cannot
    be scored on one numbering.
    """
    if run.classes is not None:
        return read_class_list(Path(run.classes)), f"the classes file {run.classes}"
    recorded = [(p, names) for p in parsed if (names := checkpoint_classes(p)) is not None]
    for p, names in recorded:
        problem = class_list_problem(names)
        if problem:
            raise FieldError("classes", f"checkpoint {p.checkpoint} of model '{p.label}' records a bad class list: "
                                        f"{problem}; pass {{name}} FILE")
    if not recorded:
        return None, "the class list"
    (first, names), *rest = recorded
    other = next(((p, n) for p, n in rest if n != names), None)
    if other is not None:
        ours, theirs = few_pair(names, other[1])
        raise RobenchError(f"models '{first.label}' ({ours}) and '{other[0].label}' ({theirs}) record different "
                           f"classes; evaluate them in separate runs")
    return names, f"the classes of model '{first.label}' (checkpoint {first.checkpoint})"


def parse_specs(specs: tuple[str, ...]) -> list[ModelSpec]:
    """Parsed model specs, labels told apart; an empty tuple gives the default models."""
    parsed = [parse_spec(s) for s in specs or tuple(f"zoo:{name}" for name in DEFAULT)]
    labels = [p.label for p in parsed]
    dup = next((lb for lb in labels if labels.count(lb) > 1), None)
    if dup:
        raise FieldError("models", f"two models are labelled '{dup}'; name them apart with LABEL=SPEC")
    return parsed


def load_models(parsed: list[ModelSpec], source: Source, pretrained: bool, device: torch.device,
                preprocess: Preprocess | None = None) -> list[LoadedModel]:
    """Load every model (``parse_specs``'s) and check it fits the dataset."""
    models = [load_model(p, source.num_classes, pretrained, device, source.native, preprocess) for p in parsed]
    for m in models:
        if m.num_classes != source.num_classes:
            fix = ("let the factory take num_classes=, or give it weights trained on this dataset "
                   "(FACTORY@CHECKPOINT)") if m.spec.is_factory else \
                "give a checkpoint trained on this dataset (NAME@CHECKPOINT)"
            raise RobenchError(f"model '{m.spec.label}' has {m.num_classes} classes but {source.name} has "
                               f"{source.num_classes}; {fix}")
    return models


@dataclass(frozen=True)
class Probed:
    """What the health probes found, and on how many samples (the results' ``probes`` section)."""

    flags: list[health.Flag] = field(default_factory=list)
    samples: int | None = None  # the samples each model was probed on; None: the probes did not run
    max_samples: int | None = None  # RunSpec.probe_samples

    def record(self) -> dict[str, int] | None:
        """{samples, max_samples} for results files; None when the probes did not run (--no-health)."""
        if self.samples is None or self.max_samples is None:
            return None
        return {"samples": self.samples, "max_samples": self.max_samples}


def probe_models(opened: Opened, run: RunSpec, dist: Dist, status: Status | None = None,
                 what: str = "eval") -> Probed:
    """The health probes of every model on the run's first ``run.probe_samples`` samples (rank 0, if the run asks).

    A fixed count, not the first batch: on a large model a batch of probes cost minutes, as much
    as the attacks asked for. ``status`` hears each model's probes start.
    """
    if not run.health_probes or not dist.is_main:
        return Probed()
    flags, seen = [], 0
    for k, m in enumerate(opened.models, start=1):
        first = probes.first_samples(opened.source, m.input, run.probe_samples)  # an unreadable image fails here,
        if status is not None:  # before a stage line, so bad data is one line
            status(what, f"health probes on {m.spec.label} ({k}/{len(opened.models)})")
        if first is None:
            continue
        flags += probes.probe(m.module, *first, m.spec.label)
        seen = max(seen, len(first[1]))
    return Probed(flags, seen, run.probe_samples)

"""The results file's schema (``schema_version`` 2, read back from 1): every field a reader uses, typed and ranged.

One definition, in pydantic, for three uses: ``results_file`` validates every results file on
read (gate, baseline update, report), ``robench schema results`` prints the JSON Schema
generated from it, and ``schemas/results.schema.json`` is that JSON Schema committed for other
tools. Types are strict (a number is never a string, a count never a float with a fraction,
``true`` never 1); fields not listed here are allowed and kept (newer files of the same schema
version may carry more), except in per-sample records, whose fields are their row's key.

Numbers are finite. A rate with an empty denominator (``success_rate`` of a clean row or of a
model right on no sample, ``transfer_rate`` when the source fooled no sample) is ``null``, as
robench writes it. A ``NaN`` literal (Python's json writes them; a file edited by hand or
written by another tool) reads as ``null`` where ``null`` is allowed and is refused elsewhere;
``Infinity`` is refused everywhere.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from robench.core.omittable import Omittable
from robench.results.samples import ENCODING


def _nan_is_null(value: Any) -> Any:
    """NaN (an older or hand-made file's empty rate) reads as null, where null is allowed."""
    return None if isinstance(value, float) and math.isnan(value) else value


def _whole(value: Any) -> Any:
    """A count written as 200.0 (a pandas float column) reads as 200; 200.5 stays a float and is refused."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Finite = Annotated[float, Field(allow_inf_nan=False)]
Share = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Diff = Annotated[float, Field(ge=-1, le=1, allow_inf_nan=False)]
Eps = Annotated[float, Field(ge=0, allow_inf_nan=False, description="perturbation budget in 1/255 units")]
Name = Annotated[str, Field(pattern=r"^[^\x00-\x1f\x7f-\x9f]*$",
                            description="a label: printable (gates print it to terminals, logs and Markdown)")]
MAX_COUNT = 2**53  # JSON's largest safe integer: more samples than any data set, and exact as a float
Count = Annotated[int, Field(ge=0, le=MAX_COUNT), BeforeValidator(_whole)]  # Field first: JSON Schema minimum/maximum
OptShare = Annotated[Share | None, BeforeValidator(_nan_is_null)]
OptDiff = Annotated[Diff | None, BeforeValidator(_nan_is_null)]
OptCount = Annotated[Count | None, BeforeValidator(_nan_is_null)]
OptEps = Annotated[Eps | None, BeforeValidator(_nan_is_null)]


ROW_KEYS = {  # command -> the columns every one of its rows carries (readers group and label rows by them)
    "eval": ("model", "attack", "eps", "top1", "n"),
    "transfer-matrix": ("source", "target", "attack", "eps", "n"),
    "leak-check": ("model", "eps", "n"),
}


def missing_column(doc: dict[str, Any]) -> tuple[int, str] | None:
    """(row index, column) of the first row lacking a column its command's rows carry (ROW_KEYS), else None.

    A file without ``command`` reads as eval's, as reports read it; another command's rows are open.
    """
    needed = ROW_KEYS.get(doc.get("command") or "eval", ())
    for i, row in enumerate(doc["rows"]):
        for column in needed:
            if column not in row:
                return i, column
    return None


class _Open(BaseModel):
    """Strict types; fields beyond those listed are allowed and kept (forward compatible within a version).

    ``Omittable[X] = Field(None)`` is a field that may be absent but never null (readers take its
    absence for a default, its null for a value); ``X | None`` may be null.
    """

    model_config = ConfigDict(strict=True, extra="allow")


class Row(_Open):
    """A result row: eval (model, attack, eps), transfer-matrix (source, target, attack, eps), leak-check (model, eps).

    Shares are in [0, 1], leak gaps and their bounds in [-1, 1]. A field may be absent (each
    command writes its own columns); ``null`` is allowed only where a value can be empty (a
    rate with no denominator), never for an accuracy, which a gate would then skip.
    """

    model: Omittable[Name] = Field(None)
    source: Omittable[Name] = Field(None)
    target: Omittable[Name] = Field(None)
    attack: Omittable[Name] = Field(None)
    eps: Omittable[Eps] = Field(None)
    top1: Omittable[Share] = Field(None)
    top5: Omittable[Share] = Field(None)
    success_rate: OptShare = Field(None, description="null on clean rows and when no sample is right clean")
    n: Omittable[Count] = Field(None)
    linf_max: Omittable[Annotated[float, Field(ge=0, allow_inf_nan=False)]] = Field(None)
    target_top1: Omittable[Share] = Field(None)
    target_top5: Omittable[Share] = Field(None)
    target_error: Omittable[Share] = Field(None)
    transfer_rate: OptShare = Field(None, description="null when the source fooled no sample (n_fooled_source 0)")
    n_fooled_source: OptCount = Field(None, description="null on clean rows")
    transfer_rate_both_clean: OptShare = Field(None, description="null when n_fooled_source_both_clean is 0")
    n_fooled_source_both_clean: OptCount = Field(None, description="null on clean rows")
    targeted_success_rate: OptShare = Field(None, description="null on clean rows and in untargeted runs")
    clean_top1: Omittable[Share] = Field(None)
    fgsm_true_top1: Omittable[Share] = Field(None)
    fgsm_predicted_top1: Omittable[Share] = Field(None)
    step_ll_top1: Omittable[Share] = Field(None)
    leak_gap: OptDiff = None
    leak_gap_low: OptDiff = None
    leak_gap_high: OptDiff = None
    leak_gap_p: OptShare = None
    leak_gap_significant: bool | None = None
    adv_minus_clean: OptDiff = None
    adv_minus_clean_low: OptDiff = None
    adv_minus_clean_high: OptDiff = None
    adv_minus_clean_p: OptShare = None
    adv_minus_clean_significant: bool | None = None
    verdict: str | None = None


class Record(BaseModel):
    """One row's packed per-sample correctness: its key columns, then base64 of numpy.packbits over dataset.ids."""

    model_config = ConfigDict(strict=True, extra="forbid")  # the fields besides *_correct are the row's key

    model: Omittable[Name] = Field(None)
    source: Omittable[Name] = Field(None)
    target: Omittable[Name] = Field(None)
    attack: Omittable[Name] = Field(None)
    eps: Omittable[Eps] = Field(None)
    top1_correct: str
    top5_correct: str | None = None


class Samples(_Open):
    """Packed per-sample outcomes (``samples``): one record per row, bits in the order of ``dataset.ids``."""

    encoding: Literal["packbits-base64"] = Field(description=f"always {ENCODING!r}")
    records: list[Record]


class Skipped(_Open):
    id: str | None = None
    file: str | None = None


class Dataset(_Open):
    """What the rows were measured on; ``ids`` orders the per-sample bits."""

    name: str | None = None
    spec: str | None = None
    split: str | None = None
    n: Count | None = None
    num_classes: Count | None = None
    classes: list[str] | None = None
    ids_sha256: str | None = None
    ids: Omittable[list[str]] = Field(None, description="sample ids, in the order of the per-sample bits")
    skipped: list[Skipped] | None = None


Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class ModelIdentity(_Open):
    """Which code computes a model: resume states and the example cache key on it beside the weights."""

    arch: str | None = Field(None, description="a timm name or a factory (FILE.py:CALLABLE, package.module:CALLABLE)")
    source_sha256: Sha256 | None = Field(None, description="a factory: SHA-256 of its source file")
    class_: str | None = Field(None, alias="class", description="a factory: the qualified name of its model's class")
    class_source_sha256: Sha256 | None = Field(None, description="a factory: SHA-256 of the file defining that class")


class ModelRecord(_Open):
    label: Name | None = None
    spec: str | None = None
    weights_sha256: str | None = None
    identity: ModelIdentity | None = Field(None, description="absent from files written before robench recorded it")


class AttackRecord(_Open):
    id: str | None = None
    name: str | None = None
    eps: Omittable[list[Eps]] = Field(None)


class SuiteRecord(_Open):
    attacks: Omittable[list[AttackRecord]] = Field(None)
    cascade: bool | None = None
    early_stop: bool | None = None
    semantics: str | None = None


class Config(_Open):
    suite: SuiteRecord | None = None


class AmpCheck(_Open):
    """The first batch under --amp against float32 (robench.run.precision)."""

    samples: Count
    outcomes: Count
    changed: Count = Field(description="top-1/top-5 outcomes that differ from float32")
    samples_changed: Count
    accepted: bool = Field(description="outcomes changed and the user confirmed them (amp_accept_changes)")


class Precision(_Open):
    """How the models ran: autocast precision (null: float32), torch.compile, channels-last memory."""

    amp: Literal["bf16", "fp16"] | None = None
    compile: bool | None = None
    channels_last: bool | None = None
    amp_check: Omittable[AmpCheck] = Field(None)


class Finding(_Open):
    """A health finding: which check flagged which model (attack, eps), and why."""

    check: str | None = None
    model: str | None = None
    attack: str | None = None
    eps: OptEps = None
    message: str | None = None
    docs: str | None = None


class ProbesRecord(_Open):
    """How many samples the health probes saw: the run's first ``samples``, at most ``max_samples``."""

    samples: Count | None = Field(None, description="the samples each model was probed on (the run's first)")
    max_samples: Count | None = Field(None, description="the most the run allowed (the run's probe_samples)")


class BudgetRecord(_Open):
    """The suite's passes per sample against AutoAttack standard's budget at the same eps and classes."""

    planned: Count | None = Field(None, description="passes per sample the suite plans (no sample falling early)")
    autoattack: Count | None = Field(None, description="passes per sample AutoAttack standard plans")
    share: float | None = Field(None, description="planned / autoattack")
    spent: dict[str, float] | None = Field(None, description="per model, passes per sample measured")
    spent_share: dict[str, float | None] | None = Field(None, description="per model, spent / autoattack")


class ResultsFile(_Open):
    """A robench results file (``--out FILE.json``, or ``FILE.csv`` with ``FILE.csv.meta.json``).

    Every row of an eval file (or one without ``command``) carries model, attack, eps, top1 and n;
    of a transfer-matrix file source, target, attack, eps and n; of a leak-check file model, eps
    and n.
    """

    model_config = ConfigDict(strict=True, extra="allow", title="robench results file")

    robench: str | None = Field(None, description="the robench version that wrote the file")
    schema_version: Literal[1, 2] = Field(description="2 (1 is read for eval and leak-check files)")
    command: str | None = Field(None, description="eval, transfer-matrix or leak-check")
    config: Config | None = None
    versions: dict[str, str] | None = None
    dataset: Dataset | None = None
    models: list[ModelRecord] | None = None
    metrics: dict[str, Any] | None = Field(None, description="each column's definition, in words")
    semantics: str | None = None
    verdicts: dict[str, str] | None = Field(None, description="leak-check: LEAK, OK or INCONCLUSIVE per model")
    health: list[Finding] | None = None
    probes: ProbesRecord | None = Field(None, description="null when the probes did not run (health off); absent "
                                        "from files written before robench bounded them")
    precision: Omittable[Precision] = Field(None, description="absent in files before robench's GPU path: float32")
    budget: Omittable[BudgetRecord] = Field(None, description="eval: the suite's passes against AutoAttack "
                                            "standard's; absent in files before robench recorded it")
    rows: list[Row] = Field(min_length=1)
    samples: Samples | None = None


def json_schema() -> dict[str, Any]:
    """The results file's JSON Schema (draft 2020-12), as ``robench schema results`` prints it."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **ResultsFile.model_json_schema()}

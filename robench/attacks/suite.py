"""Attack suites: attacks.yaml -> validated, frozen configuration.

Validation errors name the file, the line and the key, because a suite is
hand-written and a silent default would change the numbers.
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from robench.attacks import REGISTRY, get_attack
from robench.core.eps import L2_UNIT, MAX_EPS, eps_values, l2_eps_list, l2_eps_values, parse_eps, unique_eps
from robench.core.fields import Rule, check, typed
from robench.core.files import read_text
from robench.core.yaml_read import check_node, locate, read_yaml
from robench.errors import FieldError, RobenchError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

CLEAN = "clean"  # reserved id: the setting (attack name, eps 0) of the unperturbed inputs
WORST = "worst"  # reserved id: the per-sample worst case over clean and every attack of the suite, per eps
WORST_L2 = "worst-l2"  # reserved id: the same over the suite's L2 attacks (``norm: l2``), per L2 eps
WORSTS = {"linf": WORST, "l2": WORST_L2}  # each threat model's worst-case row
NORMS = ("linf", "l2")  # robench.attacks.base.Norm: the threat models, L-infinity first
DEFAULT_SUITE = Path(__file__).with_name("attacks.yaml")
BUILT_IN = {  # name -> file: `--attacks NAME` and `robench suites`
    "paper": DEFAULT_SUITE,
    "autoattack": Path(__file__).with_name("suites") / "autoattack.yaml",
    "autoattack-fast": Path(__file__).with_name("suites") / "autoattack-fast.yaml",
    "autoattack-malt": Path(__file__).with_name("suites") / "autoattack-malt.yaml",
    "autoattack-l2": Path(__file__).with_name("suites") / "autoattack-l2.yaml",
    "quick": Path(__file__).with_name("suites") / "quick.yaml",
    "transfer": Path(__file__).with_name("suites") / "transfer.yaml",
}
SUITE_KEYS = ("eps", "attacks", "cascade", "early_stop")
AUTOATTACK_TARGETS = 9  # AutoAttack standard's APGD-T and FAB-T targets
AUTOATTACK_QUERIES = 5000  # and Square's queries


@dataclass(frozen=True)
class AttackSpec:
    """One attack of a suite: registry name, result id, eps list, config.

    eps is in 1/255 units under L-infinity, the perturbation's L2 norm in [0, 1] pixels under
    L2 (``norm``, the config's).
    """

    id: str
    name: str
    eps: tuple[float, ...]
    config: DataclassInstance  # an instance of its registry entry's config class
    at: str = field(default="", compare=False)  # "FILE line N" of the entry, for messages

    def __post_init__(self) -> None:
        check(self, SPEC_FIELDS)

    @property
    def norm(self) -> str:
        """The threat model the attack keeps to: its config's ``norm``, or linf for attacks without one."""
        return str(getattr(self.config, "norm", "linf"))

    def describe(self) -> dict[str, Any]:
        """Plain-data form for result files."""
        return {"id": self.id, "name": self.name, "eps": list(self.eps),
                **dataclasses.asdict(self.config)}


def _eps_problem(eps: tuple[Any, ...]) -> str | None:
    ok = all(isinstance(e, numbers.Real) and not isinstance(e, bool) and 0 <= float(e) <= MAX_EPS for e in eps)
    return None if ok else f"be eps values in [0, {MAX_EPS:g}] (1/255 units)"


SPEC_FIELDS = {  # what a suite file's reader makes sure of (parse_eps), for specs built in code too
    "id": Rule(str, "text"),
    "name": Rule(str, "an attack's name", choices=tuple(REGISTRY)),
    "eps": Rule(tuple, "a tuple of eps", test=_eps_problem),
}
SUITE_FIELDS = {"cascade": Rule(bool, "true or false"), "early_stop": Rule(bool, "true or false")}


@dataclass(frozen=True)
class Suite:
    """An ordered set of attacks, each with its eps list, and how the engine runs them.

    ``cascade`` (AutoAttack's standard run): each attack runs only on the samples still
    robust after the attacks before it, at each eps; the per-attack rows then mean "robust
    after this stage", and the worst-case row is the same as without it.
    ``early_stop``: an iterative attack stops on a sample at its first misclassified iterate,
    and a sample fooled at a smaller eps is not attacked again at a larger one (its example
    lies inside the larger ball), so robust accuracy is monotone in eps. Both are off by
    default: the paper's numbers and the bit-exact agreement with torchattacks need full runs.
    """

    attacks: tuple[AttackSpec, ...]
    source: str = "<built-in>"
    cascade: bool = False
    early_stop: bool = False

    def __post_init__(self) -> None:
        check(self, SUITE_FIELDS)

    def describe(self) -> dict[str, Any]:
        """Plain-data form for result files."""
        return {"source": self.source, "cascade": self.cascade, "early_stop": self.early_stop,
                "semantics": self.semantics(), "attacks": [a.describe() for a in self.attacks]}

    def norms(self) -> dict[str, str]:
        """Attack id -> its norm (linf, l2), plus each worst-case row's (``WORSTS``): what results rows carry."""
        return {**{a.id: a.norm for a in self.attacks}, **{w: n for n, w in WORSTS.items()}}

    def check_l2_eps(self, pixels: int, data: str) -> None:
        """Refuse an L2 eps beyond the L2 diameter of [0, 1]^pixels, naming its suite line.

        No two images of ``pixels`` values in [0, 1] lie further apart than sqrt(pixels), so a larger
        eps is a mistake (often an L-inf eps in 1/255 units under ``norm: l2``), not a stronger attack.
        ``pixels``: channels x height x width of the inputs the attack sees. Raises RobenchError.
        """
        diameter = pixels ** 0.5
        for a in self.attacks:
            too_big = [e for e in a.eps if e > diameter] if a.norm == "l2" else []
            if too_big:
                raise RobenchError(f"{a.at or self.source}: L2 eps {too_big[0]:g} of '{a.id}' is above {diameter:.4g}, "
                                   f"the largest L2 distance between two images of {data}; an L2 eps is {L2_UNIT} "
                                   f"(RobustBench: 0.5 on CIFAR-10), so give one below it")

    def check_classes(self, classes: int, data: str) -> None:
        """Refuse an attack the data has too few classes for, naming its suite line.

        Raises RobenchError: fab_t below 3 classes (no wrong class to aim at besides the
        top one), apgd with the DLR loss below 3 and apgd_t below 4 (its DLR-T loss reads
        the 3rd and 4th largest logits; Croce & Hein 2020, eq. 7).
        """
        for a in self.attacks:
            dlr = getattr(a.config, "loss", None) == "dlr"  # DLR divides by the top minus the 3rd logit
            need = max(REGISTRY[a.name].min_classes, 3 if dlr else 2)
            if classes < need:
                what = f"'{a.id}'" if a.id == a.name else f"'{a.id}' ({a.name})"
                self._too_few(f"{a.at or self.source}: attack {what} needs at least {need} classes, but {data} "
                              f"has {classes}; ", a)

    def _too_few(self, problem: str, a: AttackSpec) -> NoReturn:
        """Raise ``problem`` and how to get past it: another loss, another attack, or leaving the attack out.

        A FieldError naming ``attack`` (the CLI's attack filter) when the suite is a built-in one.
        """
        fix = "use 'loss: ce'" if a.name == "apgd" else "remove it or use 'apgd' (untargeted, cross-entropy)"
        if self.source.endswith("(built-in)"):
            raise FieldError("attack", f"{problem}leave it out with {{name}} (keeping the others), or copy the suite "
                                       f"into a file and {fix}")
        raise RobenchError(problem + fix)

    def semantics(self) -> str:
        """What an attack row means under this suite's options, for outputs."""
        rows = "robust after this stage (cascade)" if self.cascade else "each attack on every sample"
        stop = "stop at the first misclassified iterate; survivors only across eps" if self.early_stop \
            else "full iterations at every eps"
        return "; ".join([rows, stop, *self.shortcuts()])

    def shortcuts(self) -> list[str]:
        """Where this suite spends less than AutoAttack standard and so could miss a sample it fools, one line each."""
        out = []
        for a in self.attacks:
            cfg: Any = a.config
            if a.name == "apgd_t" and cfg.targets < AUTOATTACK_TARGETS:
                how = "the nearest by MALT's linear estimate" if cfg.target_select == "malt" else "the most likely"
                out.append(f"'{a.id}' aims at {cfg.targets} of AutoAttack's {AUTOATTACK_TARGETS} targets ({how}): "
                           "a sample only another target fools is missed")
            if a.name == "square" and cfg.queries < AUTOATTACK_QUERIES:
                out.append(f"'{a.id}' stops at {cfg.queries} of AutoAttack's {AUTOATTACK_QUERIES} queries: "
                           "a sample only later queries fool is missed")
        return out


_NOT_NEGATIVE = Rule(low=0, must="be >= 0")  # a suite file's numbers, before each attack's own ranges


def build_config(name: str, options: dict[str, Any], where: Callable[[str], str] | None = None,
                 ) -> DataclassInstance:
    """The attack's frozen config from plain options, checking every key and type (robench.core.fields).

    ``where(key)`` names the file and line of a key, for messages.
    """
    attack = get_attack(name)
    kinds = typed(attack.config)  # the config's type hints
    for key, value in options.items():
        prefix = f"{where(key)}: " if where else ""
        if key not in kinds:
            allowed = ", ".join(kinds) or "none"
            raise RobenchError(f"{prefix}unknown key '{key}' for attack '{name}'; allowed: {allowed}")
        if key == "label" and value is True:  # YAML reads `label: true` as a boolean
            value = options[key] = "true"
        try:
            check({key: value}, {key: kinds[key]})
            if isinstance(value, numbers.Real) and not isinstance(value, bool):
                check({key: value}, {key: _NOT_NEGATIVE})
        except FieldError as e:
            raise RobenchError(prefix + e.named(f"'{key}' of attack '{name}'")) from None
    try:
        return attack.config(**options)
    except FieldError as e:
        prefix = f"{where(e.field)}: " if where else ""
        raise RobenchError(f"{prefix}{e.named(repr(e.field))} for attack '{name}'") from None


def _eps_from(node: Any, source: str, owner: Any, norm: str = "linf") -> tuple[float, ...]:
    """An eps list as written: 1/255 units (parse_eps) under linf, L2 norms as they are (parse_l2_eps) under l2."""
    where = locate(source, owner, "eps")
    values = node if isinstance(node, list) else [node]
    if not values:
        example = "[0.25, 0.5]" if norm == "l2" else "[2, 4, 8, 16]"
        raise RobenchError(f"{where}: 'eps' is empty; give a list such as {example}")
    if norm == "l2":
        return l2_eps_list(values, f"{where}: 'eps'")
    return unique_eps(values, [parse_eps(v, f"{where}: 'eps'") for v in values], f"{where}: 'eps'")


def _entry_norm(entry: Any) -> str:
    """The norm an entry asks for (linf when it says none); a wrong value is build_config's to refuse, by key."""
    norm = entry.get("norm", "linf") if isinstance(entry, dict) else "linf"
    return norm if norm in NORMS else "linf"


def _suite_norm(doc: dict[str, Any], entries: list[Any], source: str) -> str | None:
    """The one norm of a suite's entries, or None when they mix norms, each entry saying its own.

    A suite that mixes norms must say each entry's norm, and give each its eps: a top-level eps,
    or an entry left to the default norm, would read one number in two units (1/255 and the
    L2 norm). Raises RobenchError naming the line.
    """
    norms = [_entry_norm(e) for e in entries]
    if len(set(norms)) == 1:
        return norms[0]
    unsaid = next((e for e in entries if isinstance(e, dict) and "norm" not in e), None)
    if unsaid is not None:
        raise RobenchError(f"{locate(source, unsaid)}: this suite mixes norms (linf and l2), so each entry says "
                           "which it uses; add 'norm: linf' to this one (or move the L2 attacks to a suite of their "
                           "own)")
    if "eps" in doc:
        raise RobenchError(f"{locate(source, doc, 'eps')}: a top-level 'eps' in a suite that mixes norms would read "
                           f"one number in two units (1/255 units under linf, {L2_UNIT} under l2); give each entry "
                           "its own 'eps' instead")
    return None


def _attack_from(entry: Any, default_eps: tuple[float, ...] | None, source: str) -> AttackSpec:
    if not isinstance(entry, dict):
        raise RobenchError(f"{source}: each entry of 'attacks' must be a mapping with a 'name', got {entry!r}")
    options = dict(entry)
    where = locate(source, entry)
    name = options.pop("name", None)
    if not isinstance(name, str):
        raise RobenchError(f"{where}: attack entry needs 'name: <attack>'; known: {', '.join(REGISTRY)}")
    get_attack_at(name, where)
    ident = options.pop("id", name)
    norm = _entry_norm(entry)
    eps = _eps_from(options.pop("eps"), source, entry, norm) if "eps" in options else default_eps
    if eps is None:
        add = f"'eps: [0.5]' ({L2_UNIT})" if norm == "l2" else "a top-level 'eps: [2, 4, 8, 16]'"
        raise RobenchError(f"{where}: attack '{name}' has no eps; add {add}")
    config = build_config(name, options, lambda key: locate(source, entry, key))
    return AttackSpec(id=str(ident), name=name, eps=eps, config=config, at=where)


def get_attack_at(name: str, where: str) -> None:
    """get_attack with the file location in front of the message."""
    try:
        get_attack(name)
    except RobenchError as e:
        raise RobenchError(f"{where}: {e}") from None


def parse_suite(text: str, source: str = "<string>") -> Suite:
    """Parse and validate a suite document."""
    doc = read_yaml(text, source)
    if not isinstance(doc, dict):
        raise RobenchError(f"{source}: a suite is a mapping with 'eps' and 'attacks' keys")
    unknown = set(doc) - set(SUITE_KEYS)
    if unknown:
        key = sorted(unknown)[0]
        raise RobenchError(f"{locate(source, doc, key)}: unknown key '{key}'; allowed: {', '.join(SUITE_KEYS)}")
    entries = doc.get("attacks")
    if not isinstance(entries, list) or not entries:
        raise RobenchError(f"{locate(source, doc, 'attacks')}: 'attacks' must be a non-empty list")
    norm = _suite_norm(doc, entries, source)
    default_eps = _eps_from(doc["eps"], source, doc, norm or "linf") if "eps" in doc else None
    check_node(doc, SUITE_FIELDS, source)
    flags = {key: doc.get(key, False) for key in SUITE_FIELDS}
    suite = Suite(tuple(_attack_from(e, default_eps, source) for e in entries), source, **flags)
    return _unique(suite, tuple(locate(source, e, "id" if "id" in e else None) for e in entries))


def _unique(suite: Suite, where: tuple[str, ...] | None = None) -> Suite:
    """Attack ids key the result rows: they must differ, and 'clean', 'worst' and 'worst-l2' are taken.

    ``where`` names each attack's file and line, for messages.
    """
    first: dict[str, str] = {}
    for i, a in enumerate(suite.attacks):
        at = where[i] if where else suite.source
        if a.id in (CLEAN, WORST, WORST_L2):
            what = "clean accuracy" if a.id == CLEAN else "the per-sample worst case"
            raise RobenchError(f"{at}: attack id '{a.id}' is reserved for {what}; give the entry another 'id:'")
        if a.id in first:
            earlier = f" (first at {first[a.id]})" if where else ""
            raise RobenchError(f"{at}: attack id '{a.id}' is used twice{earlier}; give one entry its own 'id:'")
        first[a.id] = at
    return suite


def load_suite(path: str | Path | None = None) -> Suite:
    """Read a suite: a built-in name (see ``BUILT_IN``), a file, or None for the default (``paper``).

    A built-in name wins over a file of the same name; write ``./paper`` for the file.
    """
    if path is None or (isinstance(path, str) and path in BUILT_IN):
        name = "paper" if path is None else path
        file = BUILT_IN[name]
        return parse_suite(read_text(file, "attack suite"), f"{name} (built-in)")
    text = str(path)
    if not Path(path).exists() and "/" not in text and Path(text).suffix not in (".yaml", ".yml"):
        close = difflib.get_close_matches(text, BUILT_IN, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise RobenchError(f"no suite '{text}': not a built-in and no such file; {hint}built-ins: "
                           f"{', '.join(BUILT_IN)} (robench suites), or a YAML file")
    return parse_suite(read_text(text, "attack suite"), text)


def suite_budget(suite: Suite, classes: int) -> int:
    """Passes per sample the suite plans at ``classes`` classes: its attacks' budgets (robench.attacks.budget)."""
    return sum(REGISTRY[a.name].budget(a.config, a.eps, classes) for a in suite.attacks)


def budget_record(suite: Suite, classes: int, spent: dict[str, float]) -> dict[str, Any]:
    """The suite's passes per sample against AutoAttack standard's (the ``autoattack`` suite at the same eps).

    ``spent``: per model, passes per sample measured; planned budgets assume no sample falls early,
    so the measured share is the saving a run saw and the planned one its worst case.
    """
    eps = tuple(sorted({e for a in suite.attacks for e in a.eps}))
    aa = load_suite("autoattack")
    reference = suite_budget(dataclasses.replace(aa, attacks=tuple(dataclasses.replace(a, eps=eps)
                                                                   for a in aa.attacks)), classes)
    planned = suite_budget(suite, classes)
    return {"planned": planned, "autoattack": reference, "share": planned / reference if reference else None,
            "spent": {m: round(p, 3) for m, p in spent.items()},
            "spent_share": {m: (p / reference if reference else None) for m, p in spent.items()}}


def aimed(suite: Suite, target_class: str) -> Suite:
    """The suite of a targeted run: every attack aiming at each sample's target class (``label: target``).

    Raises FieldError (``check_targeted``'s) for an attack that cannot aim at a chosen class.
    """
    attacks = tuple(dataclasses.replace(a, config=dataclasses.replace(a.config, label="target"))
                    if REGISTRY[a.name].aims else a for a in suite.attacks)
    targeted = dataclasses.replace(suite, attacks=attacks)
    check_targeted(targeted, target_class)
    return targeted


def check_targeted(suite: Suite, target_class: str | None) -> None:
    """Refuse a suite at odds with the run's target class: a FieldError naming ``target_class``.

    With a target class every attack aims at it (``label: target``): a targeted success rate of an
    attack that pushes away from the true class would measure chance. Without one no attack may,
    since nothing chooses its classes.
    """
    can = ", ".join(n for n, a in REGISTRY.items() if a.aims)
    for a in suite.attacks:
        label = getattr(a.config, "label", None)
        if target_class is None and label == "target":
            raise FieldError("target_class", f"attack '{a.id}' has label 'target', but no {{name}} chooses its "
                                             "classes; set {name} (random or least_likely) or give it another label")
        if target_class is not None and not REGISTRY[a.name].aims:
            raise FieldError("target_class", f"{{name}} {target_class}: attack '{a.id}' cannot aim at a chosen "
                                             f"class; those that can: {can}; pick them with {{attack}}", "attack")
        if target_class is not None and label != "target":
            raise FieldError("target_class", f"{{name}} {target_class}: attack '{a.id}' has label '{label}', not "
                                             "'target'; every attack of a targeted run aims at the target class "
                                             "(robench.attacks.suite.aimed sets it)")


def _opening_comment(text: str) -> list[str]:
    """The lines of a file's first comment paragraph, without their '#'."""
    lines = []
    for line in text.splitlines():
        words = line.lstrip("#").strip()
        if not line.startswith("#") or not words:
            break
        lines.append(words)
    return lines


def built_in_suites() -> list[tuple[str, Suite, str]]:
    """Every built-in suite: (name, suite, the file's opening comment), for ``robench suites``."""
    out = []
    for name, file in BUILT_IN.items():
        text = read_text(file, "attack suite")
        about = " ".join(_opening_comment(text))
        out.append((name, parse_suite(text, f"{name} (built-in)"), about))
    return out


def override(suite: Suite, names: tuple[str, ...] = (), eps: tuple[float | str, ...] | None = None,
             unit: str = "1/255") -> Suite:
    """Keep only ``names`` (suite ids, else registry defaults) and/or replace every eps list.

    ``eps`` is read as --eps is (robench.core.eps.eps_values: 8, "8/255", "0.03px"; a plain 0.5 is
    refused), so code and the command line meet one rule; when every attack kept is L2, as written
    (l2_eps_values: 0.5). A name given twice is a FieldError naming ``attack`` (the CLI's filter); a
    bad eps, or one eps list for attacks of both norms, one naming ``eps``.
    """
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise FieldError("attack", f"{{name}} {dup} is given twice; give each attack once")
    attacks = _picked(suite, names) if names else suite.attacks
    if eps is not None:
        values = _eps_override(attacks, tuple(eps), unit)
        attacks = tuple(dataclasses.replace(a, eps=values) for a in attacks)
    return _unique(dataclasses.replace(suite, attacks=attacks))


def _picked(suite: Suite, names: tuple[str, ...]) -> tuple[AttackSpec, ...]:
    """The suite's attacks named, in that order; a registry name the suite lacks comes with its defaults.

    Such an attack takes the eps and the norm of the suite's first attack, so ``--attack pgd`` on
    an L2 suite runs pgd in the same L2 ball.
    """
    by_id = {a.id: a for a in suite.attacks}
    first = suite.attacks[0] if suite.attacks else None
    return tuple(by_id[n] if n in by_id else
                 AttackSpec(n, n, first.eps if first else (), _default_config(n, first.norm if first else "linf"))
                 for n in names)


def _default_config(name: str, norm: str) -> DataclassInstance:
    """The attack's default config under ``norm``; FieldError naming ``attack`` when it has no such version."""
    attack = get_attack(name)
    if norm == "linf":
        return attack.config()
    try:
        return attack.config(norm=norm)
    except (FieldError, TypeError):
        raise FieldError("attack", f"{{name}} {name} has no L2 version, and this suite's attacks are L2 "
                                   "(norm: l2); pick an attack of the suite, or one with norm: l2") from None


def _eps_override(attacks: tuple[AttackSpec, ...], eps: tuple[float | str, ...], unit: str) -> tuple[float, ...]:
    """One eps list for every attack: 1/255 units (eps_values) under linf, L2 norms as written under l2."""
    norms = {a.norm for a in attacks}
    if len(norms) > 1:
        raise FieldError("eps", "{name} gives every attack one eps list, but these attacks mix norms: L-inf eps are "
                                f"in 1/255 units and L2 eps are {L2_UNIT}, so no number means the same to both; set "
                                "each attack's eps in a suite file, or keep attacks of one norm")
    if norms == {"l2"}:
        if unit != "1/255":
            raise FieldError("eps_unit", f"{{name}} {unit} says how L-inf eps read; these attacks are L2, whose eps "
                                         f"are {L2_UNIT}, read as written; leave it out")
        return l2_eps_values(eps, "eps")
    return eps_values(eps, "eps", unit)

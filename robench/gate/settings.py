"""The attack settings behind a results file's rows, compared between results and baseline before a regression.

A row is known by model, attack id and eps; the id does not say how the attack ran. A suite that
runs ``pgd`` with 1 step under the id ``pgd`` would otherwise pass a no-regression gate against a
10-step baseline ("6 gained"), as would a cascade against a full run or another seed.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import PurePath
from typing import Any

from robench.attacks import REGISTRY
from robench.attacks.suite import CLEAN, WORSTS
from robench.errors import RobenchError

RUN_KEYS = ("cascade", "early_stop", "seed", "target_class", "ensemble_by")  # how the whole suite ran
SKIP_KEYS = ("id", "eps")  # the row's own key columns: not settings


def recorded(doc: dict[str, Any]) -> dict[str, Any] | None:
    """{"attacks": {id: settings}, "run": {RUN_KEYS}} as the file records them; None if it does not.

    Files written by robench record ``config.suite`` and ``config.seed``; older or hand-made
    files without a suite are compared on their rows alone, as before.
    """
    config = doc.get("config")
    suite = config.get("suite") if isinstance(config, dict) else None
    if not isinstance(suite, dict) or not isinstance(config, dict):
        return None
    entries = suite.get("attacks")
    entries = entries if isinstance(entries, list) else []
    attacks = {str(a.get("id")): _with_defaults({k: v for k, v in a.items() if k not in SKIP_KEYS})
               for a in entries if isinstance(a, dict)}
    ensembles = config.get("ensembles") or []  # an ensemble's mode matters only where a file has ensembles
    run = {"cascade": suite.get("cascade"), "early_stop": suite.get("early_stop"), "seed": config.get("seed"),
           "target_class": config.get("target_class"),  # untargeted (None) in files older than targeted runs
           "ensemble_by": config.get("ensemble_by", "logits") if ensembles else None}
    return {"attacks": attacks, "run": run}


def _with_defaults(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry with each setting it lacks read as its attack's default.

    A file written before a setting existed (``norm`` came later than most baselines) ran the
    attack the way the default runs it; reading the gap as the default keeps such a baseline
    comparable, while a file that names another value still differs.
    """
    attack = REGISTRY.get(str(entry.get("name")))
    if attack is None:
        return entry
    defaults = {f.name: json.loads(json.dumps(f.default)) for f in dataclasses.fields(attack.config)
                if f.default is not dataclasses.MISSING}  # as a file holds it: tuples as lists
    return {**{k: v for k, v in defaults.items() if k not in entry}, **entry}


def check_settings(attacks: Iterable[str], results: dict[str, Any], baseline: dict[str, Any],
                   names: tuple[str, str]) -> None:
    """Raise RobenchError naming every differing key when the compared attacks ran with other settings.

    ``attacks``: the attack ids of the rows a regression rule compares. A clean row depends on no
    attack setting; a worst-case row ("worst", "worst-l2") depends on every attack of the suite.
    """
    new, old = recorded(results), recorded(baseline)
    if new is None or old is None:
        return
    ids = set(attacks) - {CLEAN}
    if ids & set(WORSTS.values()):
        ids |= set(new["attacks"]) | set(old["attacks"])
    ids -= set(WORSTS.values())
    short = _short(names)
    diffs = [d for a in sorted(ids) for d in _entry_diffs(a, new["attacks"].get(a), old["attacks"].get(a), short)]
    if ids:
        diffs += [f"{k} {_show(new['run'][k])} in {short[0]}, {_show(old['run'][k])} in {short[1]}"
                  for k in RUN_KEYS if new["run"][k] != old["run"][k]]
    if diffs:
        update = names[0] if names[0].endswith((".json", ".csv")) else "RESULTS.json"
        raise RobenchError(f"{names[0]} and {names[1]} ran their attacks with other settings, so their rows do not "
                           f"compare ({'; '.join(diffs)}); evaluate with the baseline's suite and seed, or replace "
                           f"the baseline on purpose: robench baseline update {update} {names[1]}")


def _short(names: tuple[str, str]) -> tuple[str, str]:
    """The two files' own names for the list of differences (the message names their paths once)."""
    short = (PurePath(names[0]).name, PurePath(names[1]).name)
    return short if short[0] != short[1] and all(short) else names


def _entry_diffs(attack: str, new: dict[str, Any] | None, old: dict[str, Any] | None,
                 names: tuple[str, str]) -> list[str]:
    """"pgd: steps 1 in a.json, 10 in b.json" per differing key of one suite entry."""
    if new is None or old is None:
        if new is None and old is None:
            return []
        return [f"{attack}: in the suite of {names[0] if new is not None else names[1]} only"]
    keys = dict.fromkeys([*new, *old])
    return [f"{attack}: {k} {_show(new.get(k))} in {names[0]}, {_show(old.get(k))} in {names[1]}"
            for k in keys if new.get(k) != old.get(k)]


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)

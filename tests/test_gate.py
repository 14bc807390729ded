"""`robench gate`: matching, the statistics of max_drop, verdicts and health, reports, exit codes, the CI example."""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from results_docs import BASE, GRID, N, flip, invoke, make_doc, one_error_line, write

from robench.core import stats
from robench.errors import CheckFailed, RobenchError
from robench.gate import judge as gate
from robench.gate import report as gate_report
from robench.gate.rules import Rules, parse_rules
from robench.results.provenance import SCHEMA_VERSION

REPO = Path(__file__).resolve().parents[1]
CI = REPO / "examples" / "ci"



def rules(text: str) -> Rules:
    return parse_rules(text, "gates.yaml")


def run(results: dict, baseline: dict | None, text: str) -> pd.DataFrame:
    return gate.run_gate(results, baseline, rules(text)).checks


# --- matching ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("selector", "expected"), [
    ('model: "effnet-*", attack: fgsm, eps: 8', {"effnet-base fgsm eps 8", "effnet-stepll fgsm eps 8"}),
    ('model: "*-base", attack: fgsm', {f"{m} fgsm eps {e}" for m in ("effnet-base", "resnet-base") for e in (4, 8)}),
    ('attack: "[fb]*", eps: [4, 8/255], model: resnet-base', {"resnet-base fgsm eps 4", "resnet-base fgsm eps 8",
                                                             "resnet-base bim eps 8"}),
    ("eps: 0", {f"{m} clean" for m in ("effnet-base", "effnet-stepll", "resnet-base")}),
    ("model: effnet-stepll", {"effnet-stepll clean", "effnet-stepll fgsm eps 4", "effnet-stepll fgsm eps 8",
                              "effnet-stepll bim eps 8"}),
])
def test_floor_matches_globs_and_eps(selector: str, expected: set[str]) -> None:
    checks = run(make_doc(GRID), None, f"rules: [{{{selector}, min: 0.5}}]")
    assert set(checks["row"]) == expected and len(checks) == len(expected)
    assert (checks["status"] == "pass").all() and (checks["value"] == 0.75).all()


def test_floor_min_and_max_per_row() -> None:
    doc = make_doc({("m", "clean", 0.0): BASE, ("m", "fgsm", 8.0): flip(BASE, 100)})  # 0.75 and 0.25
    checks = run(doc, None, "- {attack: '*', min: 0.3}\n- {attack: clean, max: 0.7}\n- {min: 0.2, max: 0.8}")
    assert checks["status"].tolist() == ["pass", "fail", "fail", "pass", "pass"]
    assert "below the floor 0.3" in checks["detail"][1] and "above the ceiling 0.7" in checks["detail"][2]


def test_metric_other_than_top1() -> None:
    checks = run(make_doc(GRID), None, "- {attack: fgsm, metric: success_rate, max: 0.4}")
    assert len(checks) == 6 and (checks["status"] == "fail").all() and set(checks["metric"]) == {"success_rate"}


# --- statistics of max_drop ----------------------------------------------------------------------

def test_one_flipped_sample_in_200_passes_max_drop_0() -> None:
    base = make_doc({("m", "fgsm", 8.0): BASE})
    new = make_doc({("m", "fgsm", 8.0): flip(BASE, 1)})
    check = run(new, base, "- {max_drop: 0}").iloc[0]
    assert check["test"] == "paired" and check["drop"] == pytest.approx(1 / N)
    assert check["status"] == "warn" and "not significantly" in check["detail"]  # above 0, but noise
    assert check["drop_low"] < 0 < check["drop_high"]


def test_a_real_drop_of_20_in_200_fails() -> None:
    base = make_doc({("m", "fgsm", 8.0): BASE})
    new = make_doc({("m", "fgsm", 8.0): flip(BASE, 20)})
    check = run(new, base, "- {max_drop: 0.02}").iloc[0]
    d = stats.paired(BASE, flip(BASE, 20), 0.95)
    assert (d.lost, d.gained) == (20, 0)
    assert check["drop"] == pytest.approx(0.1) and check["drop_low"] == pytest.approx(-d.high)
    assert check["drop_high"] == pytest.approx(-d.low) and check["drop_low"] > 0.02
    assert check["status"] == "fail" and "20 lost, 0 gained of 200" in check["detail"]


def test_improvement_and_swaps_pass() -> None:
    swapped = flip(flip(BASE, 10, to=True), 10)  # 10 gained, 10 lost: same accuracy
    base = make_doc({("m", "clean", 0.0): BASE, ("m", "fgsm", 8.0): BASE})
    new = make_doc({("m", "clean", 0.0): flip(BASE, 30, to=True), ("m", "fgsm", 8.0): swapped})
    checks = run(new, base, "- {max_drop: 0}")
    assert checks["status"].tolist() == ["pass", "pass"] and checks["drop"].tolist() == pytest.approx([-0.15, 0])


def test_paired_sees_what_independent_cannot() -> None:
    """The same 20/200 drop, with and without per-sample outcomes: pairing removes the shared variance."""
    outcomes = ({("m", "fgsm", 8.0): BASE}, {("m", "fgsm", 8.0): flip(BASE, 20)})
    paired = run(make_doc(outcomes[1]), make_doc(outcomes[0]), "- {max_drop: 0.02}").iloc[0]
    plain = run(make_doc(outcomes[1], False), make_doc(outcomes[0], False), "- {max_drop: 0.02}").iloc[0]
    assert (paired["test"], paired["status"]) == ("paired", "fail")
    assert (plain["test"], plain["status"]) == ("independent", "warn") and "150/200 then 130/200" in plain["detail"]
    low, high = gate.independent_interval(150, 200, 130, 200, 0.95)
    assert (plain["drop_low"], plain["drop_high"]) == pytest.approx((low, high))
    assert low < 0.02 < 0.1 < high and high - low > paired["drop_high"] - paired["drop_low"]


def test_independent_interval_by_hand() -> None:
    # Agresti-Caffo: (151/202 - 131/202) +- 1.959964 * sqrt(p1 q1 / 202 + p2 q2 / 202)
    p1, p2 = 151 / 202, 131 / 202
    half = 1.959964 * np.sqrt(p1 * (1 - p1) / 202 + p2 * (1 - p2) / 202)
    assert gate.independent_interval(150, 200, 130, 200) == pytest.approx((p1 - p2 - half, p1 - p2 + half), abs=1e-6)
    assert gate.independent_interval(0, 5, 5, 5)[0] >= -1.0


def test_bonferroni_widens_each_interval() -> None:
    base = make_doc(GRID)
    family = gate.run_gate(base, base, rules("- {max_drop: 0.02}"))
    alone = gate.run_gate(base, base, rules("correction: none\nrules: [{max_drop: 0.02}]"))
    assert family.comparisons == alone.comparisons == 12
    assert family.check_confidence == pytest.approx(1 - 0.05 / 12) and alone.check_confidence == 0.95
    width = [r.checks["drop_high"][0] - r.checks["drop_low"][0] for r in (family, alone)]
    assert width[0] > width[1] and "Bonferroni" in family.statistics() and "Bonferroni" not in alone.statistics()


def test_rows_missing_from_results_fail_and_new_rows_are_skipped() -> None:
    base = make_doc({("a", "clean", 0.0): BASE, ("b", "clean", 0.0): BASE})
    new = make_doc({("a", "clean", 0.0): BASE, ("c", "clean", 0.0): BASE})
    checks = run(new, base, "- {max_drop: 0.02}").set_index("row")
    assert checks.loc["a clean", "status"] == "pass" and checks.loc["c clean", "status"] == "skip"
    assert checks.loc["b clean", "status"] == "fail" and "missing from results" in checks.loc["b clean", "detail"]


def test_no_common_row_is_bad_input() -> None:
    base, new = make_doc({("a", "clean", 0.0): BASE}), make_doc({("b", "clean", 0.0): BASE})
    with pytest.raises(RobenchError, match="no row the rule matches is in both results and baseline"):
        run(new, base, "- {max_drop: 0.02}")
    with pytest.raises(RobenchError, match="line 1: the rule .model=c. matches nothing in results"):
        run(new, base, "- {max_drop: 0.02, model: c}")


def test_edited_row_disagreeing_with_its_samples_is_refused() -> None:
    base = make_doc({("m", "clean", 0.0): BASE})
    new = make_doc({("m", "clean", 0.0): BASE})
    new["rows"][0]["top1"] = 0.9
    with pytest.raises(RobenchError, match="per-sample outcomes give 0.7500"):
        run(new, base, "- {max_drop: 0.02}")


# --- leak verdicts and health --------------------------------------------------------------------

LEAK_DOC = make_doc({("m", "clean", 0.0): BASE}, command="leak-check",
                    verdicts={"fgsm-true": "LEAK", "fgsm-pred": "OK", "stepll": "INCONCLUSIVE"})


@pytest.mark.parametrize(("rule", "statuses"), [
    ('{no_leak: true, model: "*"}', ["fail", "pass", "warn"]),
    ("{no_leak: true, model: fgsm-pred}", ["pass"]),
    ("{no_leak: true, model: stepll, allow_inconclusive: false}", ["fail"]),
    ('{no_leak: true, model: "*-*"}', ["fail", "pass"]),
])
def test_no_leak(rule: str, statuses: list[str]) -> None:
    report = gate.run_gate(LEAK_DOC, LEAK_DOC, rules(f"- {rule}\n- {{max_drop: 0.02}}"))
    assert report.checks["status"].tolist() == [*statuses, "pass"]
    assert report.comparisons == 1 and report.check_confidence == 0.95  # verdicts are not comparisons


FINDING = {"check": "masking", "model": "m", "attack": "fgsm", "eps": 8.0, "message": "fgsm beats bim",
           "docs": "README#health"}


@pytest.mark.parametrize(("health", "mode", "statuses", "needle"), [
    ([], "strict", ["pass"], "no health findings"),
    ([FINDING], "strict", ["fail"], "masking: fgsm beats bim (see README#health)"),
    ([FINDING], "warn", ["warn"], "masking"),
    (None, "strict", ["fail"], "not checked"),
    (None, "warn", ["warn"], "not checked"),
])
def test_health(health, mode: str, statuses: list[str], needle: str) -> None:
    doc = make_doc({("m", "clean", 0.0): BASE}, **({} if health is None else {"health": health}))
    checks = run(doc, None, f"- {{health: {mode}}}")
    assert checks["status"].tolist() == statuses and needle in checks["detail"][0]


def test_health_check_shows_no_row() -> None:
    report = gate.run_gate(make_doc({("m", "clean", 0.0): BASE}, health=[]), None, rules("- {health: strict}"))
    assert gate_report.display(report)["row"].tolist() == [""]  # not "nan": a health rule covers no single row


def test_transfer_rate_rules_skip_the_white_box_diagonal() -> None:
    """The diagonal's transfer rate is 1.0 by definition: a ceiling on transfer rates judges the other cells only."""
    row = {"attack": "fgsm", "eps": 8.0, "target_top1": 0.5, "n": 200}
    doc = {**make_doc(GRID, with_samples=False), "command": "transfer-matrix",
           "rows": [{"source": "a", "target": "a", **row, "transfer_rate": 1.0},
                    {"source": "a", "target": "b", **row, "transfer_rate": 0.2}]}
    checks = run(doc, None, "- {max: 0.9, metric: transfer_rate}\n- {max: 0.6, metric: target_top1}")
    assert checks["row"].tolist() == ["a -> b fgsm eps 8", "a -> a fgsm eps 8", "a -> b fgsm eps 8"]
    assert checks["status"].tolist() == ["pass", "pass", "pass"]


def test_transfer_rows_match_on_source_and_target() -> None:
    row = {"attack": "fgsm", "eps": 8.0, "target_top1": 0.5, "transfer_rate": 0.2, "n": 200}
    doc = {**make_doc(GRID, with_samples=False), "command": "transfer-matrix",
           "rows": [{"source": "a", "target": "b", **row}, {"source": "b", "target": "a", **row, "target_top1": 0.3}]}
    base = {**doc, "rows": [{**r, "target_top1": 0.5} for r in doc["rows"]]}
    checks = run(doc, base, "- {source: a, max: 0.25, metric: transfer_rate}\n- {max_drop: 0.02, metric: target_top1}")
    assert checks["row"].tolist() == ["a -> b fgsm eps 8", "a -> b fgsm eps 8", "b -> a fgsm eps 8"]
    assert checks["status"].tolist() == ["pass", "pass", "fail"] and checks["test"][2] == "independent"


# --- the CLI: exit codes, reports ----------------------------------------------------------------

@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    base = make_doc(GRID)
    worse = make_doc({k: flip(v, 30) if k == ("effnet-stepll", "fgsm", 8.0) else v for k, v in GRID.items()})
    return {
        "base": write(tmp_path / "base.json", base),
        "worse": write(tmp_path / "worse.json", worse),
        "rules": write(tmp_path / "gates.yaml", "rules:\n  - {name: no regression, max_drop: 0.02}\n"
                                                "  - {attack: clean, min: 0.7}\n"),
        "dir": tmp_path,
    }


def test_cli_pass_exit_0(files) -> None:
    r = invoke("gate", files["base"], "--baseline", files["base"], "--rules", files["rules"])
    assert r.exit_code == 0, r.stderr
    assert "robench gate: PASSED: 15 checks (15 pass, 0 warn, 0 fail, 0 skip)" in r.stdout and r.stderr == ""


def test_cli_fail_exit_1_with_reports(files) -> None:
    junit, summary = files["dir"] / "gate.xml", files["dir"] / "summary"  # $GITHUB_STEP_SUMMARY has no suffix
    r = invoke("gate", files["worse"], "--baseline", files["base"], "--rules", files["rules"],
               "--junit", junit, "--summary", summary)
    line = one_error_line(r, 1, "gate failed: 1 of 15 checks failed", "rule 1 (no regression) effnet-stepll fgsm eps 8",
                          "top1 0.7500 -> 0.6000", "drop +0.1500", "30 lost, 0 gained of 200")
    assert "significantly above 0.02" in line and "FAILED" in r.stdout and "fail" in r.stdout
    root = ET.parse(junit).getroot()
    cases = root.findall("./testsuite/testcase")
    failures = root.findall("./testsuite/testcase/failure")
    assert len(cases) == 15 and len(failures) == 1 and root.find("testsuite").get("failures") == "1"
    assert "effnet-stepll fgsm eps 8" in cases[[c.find("failure") is not None for c in cases].index(True)].get("name")
    assert "30 lost" in failures[0].text and "rule at:" in failures[0].text
    md = summary.read_text()
    table = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert md.startswith("## robench gate: FAILED: 15 checks (14 pass, 0 warn, 1 fail, 0 skip)")
    assert table[0].startswith("| status | rule | row | value | threshold | baseline | drop [interval] |")
    assert table[1].startswith("| ❌ fail | rule 1 (no regression) | effnet-stepll fgsm eps 8 | 0.6000 |")
    assert "| top1 drop <= 0.02 | 0.7500 | +0.1500 \\[" in table[1] and len(table) == 16  # "[" escaped, as in a label
    assert "**Statistics.**" in md and "Bonett-Price" in md and "12 intervals hold simultaneously" in md


def test_cli_reports_to_stdout_a_fifo_and_through_a_symlink(files) -> None:
    args = ("gate", files["worse"], "--baseline", files["base"], "--rules", files["rules"], "-q")
    r = invoke(*args, "--summary", "-")
    assert r.exit_code == 1 and r.stdout.startswith("## robench gate: FAILED: 15 checks"), r.stdout
    r = invoke(*args, "--junit", "-")
    assert r.exit_code == 1 and ET.fromstring(r.stdout).find("testsuite").get("failures") == "1"
    one_error_line(invoke(*args, "--junit", "-", "--summary", "-"), 2, "--junit - and --summary - both write to "
                   "standard output")
    d = files["dir"]
    target, link, fifo = d / "summary.md", d / "link.md", d / "pipe"
    target.write_text("old")
    link.symlink_to(target)
    os.mkfifo(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    r = invoke(*args, "--summary", link, "--junit", fifo)
    reader.join(10)
    assert r.exit_code == 1 and r.stdout == "", r.stderr
    assert link.is_symlink() and target.read_text().startswith("## robench gate: FAILED")
    assert ET.fromstring(got[0]).find("testsuite").get("failures") == "1" and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    (d / "folder").mkdir()
    one_error_line(invoke(*args, "--summary", d / "folder"), 2, "--summary", "folder is a folder; give a file name")


def test_cli_default_rules_need_a_baseline(files) -> None:
    r = invoke("gate", files["worse"], "--baseline", files["base"], "-q")
    one_error_line(r, 1, "1 of 12 checks failed")
    assert r.stdout == ""
    one_error_line(invoke("gate", files["worse"]), 2, "nothing to gate", "--rules", "--baseline")


def test_control_characters_in_labels_are_refused_and_junit_writes_them_visibly(tmp_path: Path) -> None:
    """A label with control characters (terminal escapes, XML-forbidden) is refused where it enters: in a results
    file, as in -m. The JUnit writer still writes any such character visibly, so its XML stays well-formed."""
    label = "eff\x01net\x1b[31m"
    doc = make_doc({(label, "clean", 0.0): BASE, (label, "fgsm", 8.0): flip(BASE, 30)})
    base = write(tmp_path / "b.json", make_doc({("effnet", "clean", 0.0): BASE, ("effnet", "fgsm", 8.0): BASE}))
    r = invoke("gate", write(tmp_path / "r.json", doc), "--baseline", base, "--junit", tmp_path / "j.xml", "-q")
    one_error_line(r, 2, "r.json: field rows[0].model: expected printable text (no control characters)")
    assert not (tmp_path / "j.xml").exists()
    one_error_line(invoke("eval", "-m", f"{label}=zoo:effnet-base", "--junit", tmp_path / "j.xml"), 2,
                   "holds the control character '\\x01'")
    assert gate_report.xml_text("a\tb\nc\rd\x00\ufffe\x01\ud800") == "a\tb\nc\rd\\x00\\ufffe\\x01\\ud800"


def test_csv_results_are_compared_unpaired(files, tmp_path: Path) -> None:
    from robench.results.write import write_results

    doc = json.loads(files["worse"].read_text())
    meta = {k: v for k, v in doc.items() if k not in ("rows", "samples")}
    write_results(tmp_path / "worse.csv", meta, pd.DataFrame(doc["rows"]))
    r = invoke("gate", tmp_path / "worse.csv", "--baseline", files["base"], "--junit", tmp_path / "j.xml")
    assert r.exit_code == 0, r.stderr  # unpaired, a 30/200 drop is not significant after Bonferroni
    assert "independent" in r.stdout and "warn" in r.stdout


BAD_INPUT = [
    (["{dir}/none.json", "--baseline", "{base}"], ["RESULTS: no such file ", "none.json"]),
    (["{base}", "--baseline", "{dir}/none.json"], ["--baseline: no such file ", "none.json"]),
    (["{bad_json}", "--baseline", "{base}"], ["bad.json: not valid JSON", "line 1 column"]),
    (["{old_schema}", "--baseline", "{base}"], ["schema_version 99", "reads schema_version 1 and 2"]),
    (["{no_schema}", "--baseline", "{base}"], ["no 'schema_version'"]),
    (["{old_transfer}", "--baseline", "{base}"],
     ["schema_version 1 transfer-matrix file", "transfer_rate_both_clean", "re-run"]),
    (["{base}", "--baseline", "{other_ids}"], ["different samples", "robench baseline update"]),
    (["{base}", "--rules", "{no_match}"], ["no_match.yaml line 2", "matches nothing", "model effnet-base"]),
    (["{base}", "--rules", "{bad_key}"], ["bad_key.yaml line 3", "unknown key 'esp'"]),
    (["{base}", "--rules", "{dir}/none.yaml"], ["--rules: no such file ", "none.yaml"]),
    (["{base}", "--rules", "{drop_rule}"], ["max_drop compares with a baseline", "--baseline"]),
    (["{base}", "--rules", "{leak_rule}"], ["no_leak needs a leak-check results file", "'eval'"]),
    (["{base}", "--rules", "{bad_metric}"], ["metric 'top7' is not a column"]),
    (["{base}", "--baseline", "{base}", "--junit", "{dir}/no/such/gate.xml"], ["--junit", "does not exist"]),
]


@pytest.mark.parametrize(("args", "needles"), BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_cli_bad_input_exit_2(args: list[str], needles: list[str], files) -> None:
    d = files["dir"]
    paths = {
        **{k: str(v) for k, v in files.items()},
        "bad_json": write(d / "bad.json", '{"schema_version": 1, "rows": [}'),
        "old_schema": write(d / "old.json", {**make_doc(GRID), "schema_version": 99}),
        "old_transfer": write(d / "t1.json", {**make_doc(GRID), "command": "transfer-matrix", "schema_version": 1}),
        "no_schema": write(d / "no.json", {k: v for k, v in make_doc(GRID).items() if k != "schema_version"}),
        "other_ids": write(d / "ids.json", make_doc(GRID, ids=[f"x{i}" for i in range(N)])),
        "no_match": write(d / "no_match.yaml", "rules:\n  - {model: vit, min: 0.5}\n"),
        "bad_key": write(d / "bad_key.yaml", "rules:\n  - attack: fgsm\n    esp: 8\n    min: 0.5\n"),
        "drop_rule": write(d / "drop.yaml", "- {max_drop: 0.02}"),
        "leak_rule": write(d / "leak.yaml", "- {no_leak: true}"),
        "bad_metric": write(d / "metric.yaml", "- {metric: top7, min: 0.2}"),
    }
    r = invoke("gate", *[a.format(**paths) for a in args])
    one_error_line(r, 2, *needles)
    assert r.stdout == "" and not (d / "no").exists()


def _set(*path_and_value):
    """A damage to the document: the field at the path set to the value."""
    *path, value = path_and_value

    def damage(doc: dict) -> None:
        node = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return damage


def _on_text(damage):
    """Mark a damage as one to the JSON text (str -> str)."""
    damage.on_text = True
    return damage


def _text(old: str, new: str):
    """A damage to the JSON text: the first ``old`` replaced by ``new``."""
    return _on_text(lambda text: text.replace(old, new, 1))


def _deep(levels: int) -> list:
    out: list = []
    for _ in range(levels):
        out = [out]
    return out


DAMAGED = [  # (a damage to the document, or (_on_text) to its JSON text; needles of the one error line)
    (_set("rows", 3, "top1", 5), ["field rows[3].top1: expected a number <= 1, got 5"]),
    (_set("rows", 0, "top1", -1), ["field rows[0].top1: expected a number >= 0, got -1"]),
    (_set("rows", 1, "n", 10**400), ["field rows[1].n: expected a number <= 9007199254740992"]),
    (_text('"n": 200}', '"n": -Infinity}'), ["field rows[0].n: expected a finite number, got -Infinity"]),
    (_text('"n": 200}', '"n": 1e400}'), ["field rows[0].n: expected a finite number, got Infinity"]),
    (_text('"top1": 0.75', '"top1": NaN'), ["field rows[0].top1: expected a finite number, got NaN"]),
    (_set("rows", 2, "n", 200.5), ["field rows[2].n: expected a whole number, got 200.5"]),
    (_set("rows", 2, "n", True), ["field rows[2].n: expected a whole number, got true"]),
    (_set("rows", 2, "top1", None), ["field rows[2].top1: expected a number, got null"]),
    (_set("rows", 1, "eps", "eight"), ['field rows[1].eps: expected a number, got "eight"']),
    (_set("rows", 1, "eps", -8), ["field rows[1].eps: expected a number >= 0"]),
    (_set("rows", 4, [1, 2]), ["field rows[4]: expected an object, got [1, 2]"]),
    (_set("rows", {}), ["field rows: expected a list"]),
    (_set("rows", []), ["field rows: expected at least 1 item"]),
    (_set("samples", [{"model": "a"}]), ["field samples: expected an object"]),
    (lambda d: d["samples"].pop("records"), ["field samples.records: missing"]),
    (_set("samples", "encoding", "zip"), ["field samples.encoding: expected 'packbits-base64'"]),
    (_set("samples", "records", 2, "top1_correct", "!!"), ["field samples.records[2].top1_correct", "base64"]),
    (_set("samples", "records", 2, "top1_correct", "AAAA"), ["field samples.records[2].top1_correct", "200 samples"]),
    (_set("samples", "records", 0, "eps", [8]), ["field samples.records[0].eps: expected a number"]),
    (_set("models", ["a", "b"]), ['field models[0]: expected an object, got "a"']),
    (_set("models", {"a": 1}), ["field models: expected a list"]),
    (_set("dataset", "ids", "s0"), ["field dataset.ids: expected a list"]),
    (_set("dataset", []), ["field dataset: expected an object"]),
    (_set("health", [{"model": 3}]), ["field health[0].model: expected a string, got 3"]),
    (_set("verdicts", ["OK"]), ["field verdicts: expected an object"]),
    (_set("config", {"suite": {"attacks": [{"eps": ["x"]}]}}), ["field config.suite.attacks[0].eps[0]"]),
    (_set("extra", _deep(70)), ["field extra[0][0]", "nested too deep"]),
    (_on_text(lambda text: "[" * 100_000 + "]" * 100_000), ["nested too deep"]),
    (_text('"n": 200', '"n": ' + "9" * 5000), ["not a robench results file", "digits"]),
    (_text('"name": "t"', '"name": "\udcff"'), ["not UTF-8"]),
]


@pytest.mark.parametrize(("damage", "needles"), DAMAGED, ids=[n[0][:60] for _, n in DAMAGED])
def test_damaged_results_exit_2_naming_file_and_field(damage, needles: list[str], files) -> None:
    doc = make_doc(GRID)
    if getattr(damage, "on_text", False):
        text = damage(json.dumps(doc))
    else:
        damage(doc)
        text = json.dumps(doc)
    bad = files["dir"] / "damaged.json"
    bad.write_bytes(text.encode("utf-8", "surrogateescape"))
    before, summary, copy = bad.read_bytes(), files["dir"] / "summary.md", files["dir"] / "copy.json"
    for args in (["gate", bad, "--baseline", files["base"], "--summary", summary],
                 ["gate", files["base"], "--baseline", bad, "--summary", summary],
                 ["baseline", "update", bad, copy]):
        one_error_line(invoke(*args), 2, "damaged.json", *needles)
    assert bad.read_bytes() == before and not summary.exists() and not copy.exists()


@pytest.mark.slow
def test_special_files_as_results_exit_2_at_once(files) -> None:
    fifo = files["dir"] / "fifo.json"
    os.mkfifo(fifo)
    for path, kind in (("/dev/zero", "a character device"), (fifo, "a named pipe"), (files["dir"], "a folder")):
        proc = subprocess.run([sys.executable, "-m", "robench", "gate", str(path), "--baseline", str(files["base"])],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines() == [f"robench: error: results file {path} is {kind}, not a regular "
                                                    f"file; give a file"]


@pytest.mark.slow
def test_rules_from_a_special_or_huge_file_exit_2(files) -> None:
    proc = subprocess.run([sys.executable, "-m", "robench", "gate", str(files["base"]), "--rules", "/dev/zero"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "robench: error: gate rules file /dev/zero is a character device, not a regular file; give a file"]
    deep = write(files["dir"] / "deep.yaml", "[" * 100_000 + "]" * 100_000)
    one_error_line(invoke("gate", files["base"], "--rules", deep), 2, "deep.yaml", "nested too deep")
    huge = write(files["dir"] / "huge.yaml", "# padding\n" * 500_000 + "- {min: 0.5}\n")
    one_error_line(invoke("gate", files["base"], "--rules", huge), 2, "gate rules file", "huge.yaml",
                   "larger than 1 MiB", "is it the right file?")


def test_results_over_the_size_limit_exit_2(files, monkeypatch: pytest.MonkeyPatch) -> None:
    from robench.results import read as results_file

    monkeypatch.setattr(results_file, "RESULTS_LIMIT", 1000)
    one_error_line(invoke("gate", files["base"], "--baseline", files["base"]), 2, "base.json", "larger than 1000 bytes")


def test_gate_never_writes_its_baseline(files) -> None:
    before = files["base"].read_bytes()
    invoke("gate", files["worse"], "--baseline", files["base"])
    assert files["base"].read_bytes() == before


# --- the library entry point ---------------------------------------------------------------------

def test_gate_function_raises_check_failed() -> None:
    base = make_doc(GRID)
    report = gate.gate(base, base)
    assert report.passed and report.counts() == {"pass": 12, "warn": 0, "fail": 0, "skip": 0}
    with pytest.raises(CheckFailed, match="gate failed: 1 of 1 checks failed"):
        gate.gate(base, None, rules("- {model: effnet-base, attack: clean, min: 0.8}"))
    assert "PASSED" in gate_report.headline(report) and list(report.checks.columns) == gate.CHECK_COLUMNS


# --- the CI example: the committed baseline, the workflow's own commands -------------------------

def workflow_commands(tmp_path: Path) -> dict[str, list[str]]:
    """The workflow's robench commands, with its files mapped into tmp_path and the repository."""
    steps = yaml.safe_load((CI / "robench-gate.yml").read_text())["jobs"]["gate"]["steps"]
    local = {"results.json": tmp_path / "results.json", "gate.xml": tmp_path / "gate.xml",
             "$GITHUB_STEP_SUMMARY": tmp_path / "summary.md", "report.md": tmp_path / "report.md"}
    out = {}
    for step in steps:
        words = shlex.split(step.get("run", ""))
        if words[:1] == ["robench"]:
            out[words[1]] = [str(local.get(w, REPO / w if w.startswith("examples/") else w)) for w in words[2:]]
    return out


@pytest.mark.slow
def test_ci_example_passes_on_the_zoo(tmp_path: Path) -> None:
    """The workflow's eval, gate and report, exactly as it runs them, against the committed baseline."""
    cmds = workflow_commands(tmp_path)
    assert set(cmds) == {"eval", "gate", "report"}
    r = invoke("eval", *cmds["eval"], "-q")
    assert r.exit_code == 0, r.stderr
    r = invoke("gate", *cmds["gate"])
    assert r.exit_code == 0, (r.stdout, r.stderr)
    assert "PASSED" in r.stdout and r.stderr == ""
    assert "no baseline row" not in r.stdout  # every row compared: the baseline holds the worst-case rows too
    assert json.loads((CI / "baseline.json").read_text())["schema_version"] == SCHEMA_VERSION
    assert ET.parse(tmp_path / "gate.xml").getroot().get("failures") == "0"
    assert "## robench gate: PASSED" in (tmp_path / "summary.md").read_text()
    r = invoke("report", *cmds["report"], "-q")
    report = (tmp_path / "report.md").read_text()
    assert r.exit_code == 0 and report.startswith("# robench report"), r.stderr
    assert "](report_files/" in report and any((tmp_path / "report_files").glob("*.png"))


@pytest.mark.slow
def test_ci_example_catches_a_degraded_model(tmp_path: Path) -> None:
    """effnet-base relabelled as the step l.l. model: eval --gate and gate both exit 1, with a readable summary."""
    cmds = workflow_commands(tmp_path)
    degraded = ["effnet-base=zoo:effnet-base", "effnet-stepll=zoo:effnet-base"]
    r = invoke("eval", *degraded, *cmds["eval"], "-q", "--rules", CI / "gates.yaml", "--baseline", CI / "baseline.json")
    one_error_line(r, 1, "gate failed", "effnet-stepll fgsm")
    assert (tmp_path / "results.json").exists()  # results are written before the gate judges them
    r = invoke("gate", *cmds["gate"])
    one_error_line(r, 1, "gate failed")
    md = (tmp_path / "summary.md").read_text()
    fails = [ln for ln in md.splitlines() if ln.startswith("| ❌ fail")]
    assert md.startswith("## robench gate: FAILED")
    assert any("(step l.l. model resists fgsm) | effnet-stepll fgsm eps 8" in ln for ln in fails)
    assert any("(no regression) | effnet-stepll fgsm eps 8" in ln and "significantly above 0.02" in ln for ln in fails)
    assert not any("effnet-base" in ln.split("|")[3] for ln in fails)  # the real effnet-base still passes


def test_eval_gate_bad_rules_fail_before_evaluating(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import robench.run.evaluate

    monkeypatch.setattr(robench.run.evaluate, "run_eval", lambda *a, **k: pytest.fail("evaluated despite bad rules"))
    bad = write(tmp_path / "gates.yaml", "- {min: 0.4, mx: 1}")
    r = invoke("eval", "--rules", bad, "--out", tmp_path / "r.json")
    one_error_line(r, 2, "gates.yaml line 1", "unknown key 'mx'")
    one_error_line(invoke("eval", "--baseline", tmp_path / "none.json"), 2, "--baseline: no such file ")
    assert not (tmp_path / "r.json").exists()


def test_eval_gate_in_memory_passes(tmp_path: Path) -> None:
    args = ["zoo:resnet-base", "--limit", "40", "--attack", "fgsm", "--eps", "8", "-q"]
    r = invoke("eval", *args, "--out", tmp_path / "b.json")
    assert r.exit_code == 0, r.stderr
    r = invoke("eval", *args, "--baseline", tmp_path / "b.json")
    assert r.exit_code == 0 and r.stderr == "", r.stderr
    r = invoke("eval", *args[:-1], "--baseline", tmp_path / "b.json", "--rules", write(tmp_path / "g.yaml",
               "- {max_drop: 0}\n- {attack: fgsm, min: 0.5}"))
    assert r.exit_code == 1 and "robench gate: FAILED" in r.stdout and "robench eval" in r.stdout  # both tables
    last = r.stderr.strip().splitlines()[-1]  # after the progress bar
    # max_drop on clean, fgsm and worst, and the fgsm floor
    assert last.startswith("robench: error: gate failed: 1 of 4 checks failed") and "below the floor 0.5" in last


def test_gate_on_the_worst_case_row(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    r = invoke("eval", "zoo:resnet-stepll", "--limit", "40", "--attack", "fgsm", "--attack", "pgd", "--eps", "8",
               "-q", "--out", out)
    assert r.exit_code == 0, r.stderr
    top1 = {(row["attack"], row["eps"]): row["top1"] for row in json.loads(out.read_text())["rows"]}
    floor = top1[("worst", 8.0)]
    assert floor <= min(top1[("fgsm", 8.0)], top1[("pgd", 8.0)], top1[("clean", 0.0)])
    passing = invoke("gate", out, "--rules", write(tmp_path / "ok.yaml", f"- {{attack: worst, eps: 8, min: {floor}}}"))
    assert passing.exit_code == 0, passing.stderr
    failing = invoke("gate", out, "--rules", write(tmp_path / "no.yaml", f"- {{attack: worst, min: {floor + 0.01}}}"))
    assert failing.exit_code == 1 and "resnet-stepll worst eps 8" in failing.stdout


def test_eval_gate_checks_its_rules_before_any_work(tmp_path: Path) -> None:
    """A rule no row can match failed only after the whole evaluation (224 s in the report): now before it."""
    (tmp_path / "gates.yaml").write_text("rules:\n  - {model: vit, min: 0.5}\n")
    out = tmp_path / "r.json"
    r = invoke("eval", "zoo:resnet-base", "--attack", "fgsm", "--eps", "8", "--rules", tmp_path / "gates.yaml",
               "--out", out)
    one_error_line(r, 2, "gates.yaml line 2", "matches nothing this eval will write", "model resnet-base",
                   "attack clean, fgsm, worst")
    assert not out.exists() and "eval" not in r.stderr.split("robench: error")[0]  # no progress: nothing ran


def test_eval_baseline_of_other_samples_or_rows_fails_before_any_attack(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A baseline on other samples used to fail after the run, with --out written: now once the data opens."""
    import robench.run.evaluate

    monkeypatch.setattr(robench.run.evaluate, "probe_models", lambda *a, **k: pytest.fail("probed the models"))
    monkeypatch.setattr(robench.run.evaluate.engine, "run", lambda *a, **k: pytest.fail("attacked"))
    out = tmp_path / "r.json"
    args = ("eval", "zoo:resnet-base", "--attack", "fgsm", "--eps", "8", "--limit", "20", "--out", out, "--baseline")
    other_ids = write(tmp_path / "ids.json", make_doc(GRID, ids=[f"x{i}" for i in range(N)]))
    r = invoke(*args, other_ids)
    one_error_line(r, 2, f"eval results and {other_ids} were evaluated on different samples", "--limit",
                   "robench baseline update")
    other_models = write(tmp_path / "vit.json", make_doc({("vit", "clean", 0.0): BASE, ("vit", "fgsm", 8.0): BASE}))
    monkeypatch.setattr(robench.run.evaluate, "open_run", lambda *a, **k: pytest.fail("opened the data"))
    r = invoke(*args, other_models)
    one_error_line(r, 2, f"no row the rule matches is in both this eval and {other_models}", "none alike")
    assert not out.exists() and r.stdout == ""


def test_eval_gate_writes_summary_and_junit(tmp_path: Path) -> None:
    (tmp_path / "gates.yaml").write_text("rules:\n  - {model: resnet-base, attack: clean, min: 0.5}\n")
    r = invoke("eval", "zoo:resnet-base", "--attack", "fgsm", "--eps", "8", "--limit", "20", "-q", "--no-health",
               "--rules", tmp_path / "gates.yaml", "--summary", tmp_path / "s.md", "--junit", tmp_path / "j.xml")
    assert r.exit_code == 0, r.stderr
    assert "resnet-base" in (tmp_path / "s.md").read_text() and "<testcase" in (tmp_path / "j.xml").read_text()
    one_error_line(invoke("eval", "--summary", tmp_path / "x.md"), 2, "--junit and --summary report a gate")


def test_same_ids_other_images_are_refused_and_files_without_content_fall_back_to_ids(tmp_path: Path) -> None:
    """Two folders of the same file names share their ids: only dataset.content_sha256 tells them apart."""
    def doc(content: str | None) -> dict:
        made = make_doc(GRID)
        if content is not None:
            made["dataset"]["content_sha256"] = content
        return made

    base = write(tmp_path / "a.json", doc("a" * 64))
    other = write(tmp_path / "b.json", doc("b" * 64))
    one_error_line(invoke("gate", other, "--baseline", base), 2,
                   f"{other} and {base} were evaluated on the same sample ids but other images "
                   f"(dataset content sha256 {'b' * 12} vs {'a' * 12})", "robench baseline update")
    for results, baseline in ((doc("a" * 64), doc(None)), (doc(None), doc("a" * 64)), (doc("a" * 64), doc("a" * 64))):
        r = invoke("gate", write(tmp_path / "r.json", results), "--baseline", write(tmp_path / "base.json", baseline))
        assert r.exit_code == 0, r.stderr


# --- like with like: the attack settings behind compared rows (issue 26, item 6) ----------------------------------

PGD = {("m", "clean", 0.0): BASE, ("m", "pgd", 8.0): BASE}


def suite_config(steps: int = 10, cascade: bool = False, seed: int = 0) -> dict:
    """``config`` as robench eval records it: the suite (each entry's settings) and the seed."""
    pgd = {"id": "pgd", "name": "pgd", "eps": [8.0], "steps": steps, "alpha": 2.0, "random_start": True}
    return {"suite": {"source": "s.yaml", "cascade": cascade, "early_stop": False, "attacks": [pgd]}, "seed": seed}


@pytest.mark.parametrize(("results", "needles"), [
    (suite_config(steps=1), ["pgd: steps 1 in r.json, 10 in b.json"]),  # the weakened suite, under the same id
    (suite_config(cascade=True), ["cascade true in r.json, false in b.json"]),
    (suite_config(seed=1), ["seed 1 in r.json, 0 in b.json"]),
    (suite_config(steps=1, seed=2), ["pgd: steps 1 in r.json, 10 in b.json", "seed 2 in r.json, 0 in b.json"]),
])
def test_a_gate_refuses_rows_run_with_other_attack_settings(results: dict, needles: list[str],
                                                            tmp_path: Path) -> None:
    """1 step of pgd under the id pgd, 'gaining' 40 samples on a 10-step baseline, passed the gate: now exit 2."""
    stronger = {k: flip(v, 40, to=True) if k[1] == "pgd" else v for k, v in PGD.items()}
    r_json = write(tmp_path / "r.json", make_doc(stronger, config=results))
    b_json = write(tmp_path / "b.json", make_doc(PGD, config=suite_config()))
    r = invoke("gate", r_json, "--baseline", b_json)
    one_error_line(r, 2, *needles, "other settings", f"robench baseline update {r_json} {b_json}")
    assert r.stdout == ""


def test_settings_are_compared_only_for_the_rows_a_regression_compares(tmp_path: Path) -> None:
    """Clean rows depend on no attack setting; floors compare nothing; files without a suite keep the old behaviour."""
    b_json = write(tmp_path / "b.json", make_doc(PGD, config=suite_config()))
    weak = write(tmp_path / "r.json", make_doc(PGD, config=suite_config(steps=1, seed=3)))
    clean_only = write(tmp_path / "g.yaml", "- {attack: clean, max_drop: 0.02}\n- {attack: pgd, min: 0.5}")
    assert invoke("gate", weak, "--baseline", b_json, "--rules", clean_only).exit_code == 0
    r = invoke("gate", weak, "--baseline", write(tmp_path / "old.json", make_doc(PGD)))
    assert r.exit_code == 0, r.stderr
    worst = {**PGD, ("m", "worst", 8.0): BASE}
    r = invoke("gate", write(tmp_path / "w.json", make_doc(worst, config=suite_config(steps=1))), "--baseline",
               write(tmp_path / "wb.json", make_doc(worst, config=suite_config())), "--rules",
               write(tmp_path / "worst.yaml", "- {attack: worst, max_drop: 0.02}"))
    one_error_line(r, 2, "pgd: steps 1 in", "10 in")  # the worst case depends on every attack


@pytest.mark.parametrize(("new", "old", "needle"), [
    ({"target_class": "random"}, {"target_class": "least_likely"},
     "target_class random in r.json, least_likely in b.json"),
    ({"ensembles": [["a", "b"]], "ensemble_by": "probs"}, {"ensembles": [["a", "b"]], "ensemble_by": "logits"},
     "ensemble_by probs in r.json, logits in b.json"),
    ({"ensembles": [["a", "b"]], "ensemble_by": "probs"}, {"ensembles": [["a", "b"]]},  # older: logits, the default
     "ensemble_by probs in r.json, logits in b.json"),
])
def test_a_gate_refuses_another_target_choice_or_ensemble_fusion(new: dict, old: dict, needle: str,
                                                                  tmp_path: Path) -> None:
    """random targets against least-likely ones, or probs-fused ensembles against logits, passed a gate: now exit 2."""
    r_json = write(tmp_path / "r.json", make_doc(PGD, config={**suite_config(), **new}))
    b_json = write(tmp_path / "b.json", make_doc(PGD, config={**suite_config(), **old}))
    one_error_line(invoke("gate", r_json, "--baseline", b_json), 2, needle, "other settings")
    same = write(tmp_path / "same.json", make_doc(PGD, config={**suite_config(), "ensemble_by": "probs"}))
    assert invoke("gate", same, "--baseline", write(tmp_path / "plain.json", make_doc(PGD, config=suite_config()))
                  ).exit_code == 0  # without ensembles the fusion decides nothing


def test_a_setting_a_baseline_predates_reads_as_its_default(tmp_path: Path) -> None:
    """A baseline written before ``norm`` existed ran L-infinity: it compares with norm linf, not with norm l2."""
    def config(**extra: str) -> dict:
        made = suite_config()
        made["suite"]["attacks"][0].update(extra)
        return made

    b_json = write(tmp_path / "b.json", make_doc(PGD, config=suite_config()))  # no norm key
    r = invoke("gate", write(tmp_path / "r.json", make_doc(PGD, config=config(norm="linf"))), "--baseline", b_json)
    assert r.exit_code == 0, r.stderr
    r = invoke("gate", write(tmp_path / "l2.json", make_doc(PGD, config=config(norm="l2"))), "--baseline", b_json)
    one_error_line(r, 2, 'pgd: norm l2 in l2.json, linf in b.json')


def test_eval_baseline_with_other_settings_fails_before_any_work(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import robench.run.evaluate

    monkeypatch.setattr(robench.run.evaluate, "open_run", lambda *a, **k: pytest.fail("opened the data"))
    fgsm = json.loads((CI / "baseline.json").read_text())["config"]["suite"]["attacks"][0]
    config = {"suite": {"source": "x", "cascade": False, "early_stop": False, "attacks": [{**fgsm, "eps": [8.0]}]},
              "seed": 0}
    base = write(tmp_path / "b.json", make_doc({("resnet-base", "fgsm", 8.0): BASE}, config=config))
    out = tmp_path / "r.json"
    r = invoke("eval", "zoo:resnet-base", "--attack", "fgsm", "--eps", "8", "--seed", "1", "--out", out,
               "--baseline", base)
    one_error_line(r, 2, "seed 1 in this eval, 0 in b.json", "robench baseline update")
    assert not out.exists()


# --- a gate that judged nothing (item 7), a gate too small to fail (item 11) ----------------------------------------

def test_a_gate_whose_every_check_is_skipped_is_bad_input(files) -> None:
    """The issue's example passed: 'PASSED: 1 checks (0 pass, 0 warn, 0 fail, 1 skip)', exit 0."""
    clean = {("m", "clean", 0.0): BASE}
    doc = write(files["dir"] / "clean.json", make_doc(clean))
    r = invoke("gate", doc, "--rules", write(files["dir"] / "s.yaml", "- {attack: clean, metric: success_rate, "
                                                                        "min: 0.5}"))
    one_error_line(r, 2, "s.yaml line 1", "judges nothing", "success_rate is empty", "selectors or metric")
    assert r.stdout == ""
    # one rule judging nothing beside others that judge is the same mistake
    r = invoke("gate", files["base"], "--rules", write(files["dir"] / "t.yaml", "- {attack: fgsm, min: 0.5}\n"
                                                       "- {attack: clean, metric: success_rate, min: 0.5}"))
    one_error_line(r, 2, "t.yaml line 2", "judges nothing")


def test_a_gate_over_too_few_samples_warns_that_it_cannot_fail(tmp_path: Path) -> None:
    """n = 1: the drop's interval is about [-1, 1] whatever happens, so no regression can fail it."""
    one = {("m", "clean", 0.0): np.array([True]), ("m", "fgsm", 8.0): np.array([True])}
    lost = {k: np.array([False]) for k in one}
    r = invoke("gate", write(tmp_path / "r.json", make_doc(lost)), "--baseline", write(tmp_path / "b.json",
                                                                                         make_doc(one)))
    assert r.exit_code == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("robench: warning: default rule"), r.stderr
    assert "2 of its rows compare only n = 1 samples" in lines[0] and "evaluate more samples" in lines[0]
    need = gate.samples_needed(0.02, 1 - 0.05 / 2, "paired")  # two rows: Bonferroni
    assert need is not None and f"at least {need} samples" in lines[0]
    assert gate.worst_low(need, need, 1 - 0.05 / 2, "paired") > 0.02 >= gate.worst_low(need - 1, need - 1,
                                                                                         1 - 0.05 / 2, "paired")
    big = invoke("gate", write(tmp_path / "big.json", make_doc(GRID)), "--baseline", tmp_path / "big.json")
    assert big.exit_code == 0 and big.stderr == ""  # 200 samples can show a drop above 0.02
    assert gate.samples_needed(1.0, 0.95, "independent") is None  # max_drop 1: no drop is ever above it

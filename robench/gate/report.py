"""A GateReport as a rich table, a Markdown summary (GitHub step summary, PR comment) and JUnit XML."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any

import pandas as pd

from robench.core.text import to_markdown
from robench.gate.judge import FAIL, PASS, SKIP, WARN, GateReport

if TYPE_CHECKING:  # rich is imported where the table is drawn; here for its type only
    from rich.table import Table

MARKS = {PASS: "✅ pass", WARN: "⚠️ warn", FAIL: "❌ fail", SKIP: "➖ skip"}
STYLES = {PASS: "green", WARN: "yellow", FAIL: "bold red", SKIP: "dim"}
DISPLAY_COLUMNS = ["status", "rule", "row", "value", "threshold", "baseline", "drop [interval]", "detail"]


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _drop(check: pd.Series) -> str:
    if not isinstance(check["drop"], float) or math.isnan(check["drop"]):
        return ""
    return f"{check['drop']:+.4f} [{check['drop_low']:+.4f}, {check['drop_high']:+.4f}]"


def display(report: GateReport, failures_first: bool = False) -> pd.DataFrame:
    """The checks as text, one column per DISPLAY_COLUMNS entry (failures first when asked)."""
    checks = report.checks
    if failures_first:
        checks = checks.sort_values("status", key=lambda s: s != FAIL, kind="stable")
    rows = [[c["status"], c["rule"], c["row"] if isinstance(c["row"], str) else "", _text(c["value"]), c["threshold"],
             _text(c["baseline"]), _drop(c), c["detail"]] for _, c in checks.iterrows()]
    return pd.DataFrame(rows, columns=DISPLAY_COLUMNS)


def headline(report: GateReport) -> str:
    """"PASSED: 12 checks (10 pass, 2 warn, 0 fail, 0 skip)"."""
    counts = report.counts()
    verdict = "PASSED" if report.passed else "FAILED"
    return f"{verdict}: {len(report.checks)} checks ({', '.join(f'{n} {s}' for s, n in counts.items())})"


def markdown(report: GateReport, inputs: str = "") -> str:
    """A Markdown summary: verdict, inputs, the checks (failures first) and how they were judged."""
    frame = display(report, failures_first=True)
    frame["status"] = frame["status"].map(MARKS)
    lines = [f"## robench gate: {headline(report)}", ""]
    if inputs:
        lines += [inputs, ""]
    lines += [to_markdown(frame), f"**Statistics.** {report.statistics()}", ""]
    return "\n".join(lines)


def junit(report: GateReport, suite_name: str = "robench gate") -> str:
    """JUnit XML: one testcase per (rule, matched row), with <failure> for failed checks."""
    counts = report.counts()
    attrs = {"name": suite_name, "tests": str(len(report.checks)), "failures": str(counts[FAIL]),
             "errors": "0", "skipped": str(counts[SKIP])}
    root = ET.Element("testsuites", attrs)
    suite = ET.SubElement(root, "testsuite", attrs)
    for _, c in report.checks.iterrows():
        case = ET.SubElement(suite, "testcase", {"classname": f"robench.gate.judge.{c['kind']}",
                                                 "name": f"{c['rule']}: {c['row'] or c['threshold']}"})
        if c["status"] == FAIL:
            ET.SubElement(case, "failure", {"message": c["detail"], "type": c["kind"]}).text = _case_text(c)
        elif c["status"] == SKIP:
            ET.SubElement(case, "skipped", {"message": c["detail"]})
        else:
            ET.SubElement(case, "system-out").text = _case_text(c)
    for element in root.iter():
        _xml_safe(element)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# what XML 1.0 forbids: control characters but tab, newline and return; lone surrogates; U+FFFE and U+FFFF
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_text(text: str) -> str:
    """``text`` with each character XML 1.0 forbids written visibly (``\\x01``), so the file parses and says it."""
    return _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}",
                        text)


def _xml_safe(element: ET.Element) -> None:
    """Make an element's text, tail and attribute values XML 1.0 (labels come from -m and may hold anything)."""
    if element.text:
        element.text = xml_text(element.text)
    if element.tail:
        element.tail = xml_text(element.tail)
    for key, value in list(element.attrib.items()):
        element.set(key, xml_text(value))


def _case_text(check: pd.Series) -> str:
    parts = [f"{k}: {v}" for k, v in (("value", _text(check["value"])), ("threshold", check["threshold"]),
                                      ("baseline", _text(check["baseline"])), ("drop [interval]", _drop(check)),
                                      ("status", check["status"]), ("detail", check["detail"]),
                                      ("rule at", check["where"])) if v]
    return "\n".join(parts)


def table(report: GateReport) -> Table:
    """A rich table of every check, the status coloured."""
    from rich.table import Table

    frame = display(report)
    out = Table(title=f"robench gate: {headline(report)}", title_justify="left", caption=report.statistics(),
                caption_justify="left")
    for col in DISPLAY_COLUMNS:
        out.add_column(col, justify="right" if col in ("value", "baseline") else "left",
                       overflow="fold")
    for row in frame.itertuples(index=False):
        out.add_row(f"[{STYLES[str(row.status)]}]{row.status}[/]", *[str(v) for v in row[1:]])
    return out

"""robench report (render.report_doc): every input's models and rows, the merged leaderboard, refusals, HTML/MD."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from results_docs import N, invoke, make_doc, one_error_line, write

from robench.render.report_doc import Input, leaderboard, rows_text


def bits(right: int) -> np.ndarray:
    """N per-sample outcomes, the first ``right`` correct."""
    return np.arange(N) < right


def eval_doc(robust: dict[str, tuple[int, int]], ids: list[str] | None = None, worst: bool = True) -> dict:
    """An eval document: per model, (right at eps 4, right at eps 8) under the worst case (or fgsm alone)."""
    attack = "worst" if worst else "fgsm"
    outcomes = {}
    for model, (at4, at8) in robust.items():
        outcomes |= {(model, "clean", 0.0): bits(190), (model, "fgsm", 4.0): bits(at4 + 5),
                     (model, "fgsm", 8.0): bits(at8 + 5), (model, attack, 4.0): bits(at4),
                     (model, attack, 8.0): bits(at8)}
    return make_doc(outcomes, ids=ids)


def transfer_doc() -> dict:
    rows = [{"source": s, "target": t, "attack": a, "eps": e, "target_top1": 0.5, "target_top5": 0.9,
             "transfer_rate": None if a == "clean" else 0.25, "n_fooled_source": 10, "n": 40}
            for s in ("m1", "m2") for t in ("m1", "m2") for a, e in (("clean", 0.0), ("fgsm", 8.0))]
    return {**make_doc({("m1", "clean", 0.0): bits(1)}, with_samples=False), "command": "transfer-matrix",
            "rows": rows}


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory) -> dict[str, Path]:
    """Small results files written by robench itself: one eval and one leak-check."""
    d = tmp_path_factory.mktemp("report")
    common = ["--eps", "4,8", "--limit", "20", "-q", "--out"]
    assert invoke("eval", "zoo:resnet-base", "--attack", "fgsm", *common, d / "a.json").exit_code == 0
    assert invoke("leak-check", "zoo:resnet-base", *common, d / "l.json").exit_code == 0
    return {"eval": d / "a.json", "leak": d / "l.json", "transfer": write(d / "t.json", transfer_doc())}


def _all_rows_in(text: str, path: Path) -> None:
    import json

    doc = json.loads(path.read_text())
    for model in doc.get("models", []):
        assert model["label"] in text and model["weights_sha256"] in text
    for row in rows_text(Input(str(path), doc).rows).itertuples(index=False):
        assert " | ".join(row) in text or "</td><td>".join(row) in text, row


@pytest.mark.parametrize("suffix", [".md", ".html"])
def test_every_model_and_row_of_each_input_appears(cli_files, tmp_path, suffix) -> None:
    out = tmp_path / f"report{suffix}"
    result = invoke("report", *cli_files.values(), "-o", out)
    assert result.exit_code == 0, result.stderr
    text = out.read_text()
    for path in cli_files.values():
        _all_rows_in(text, path)
    assert "ids sha256" in text and "Leaderboard" in text


def test_merged_leaderboard_sorts_most_robust_first(tmp_path) -> None:
    a = eval_doc({"weak": (60, 10), "strong": (50, 40)})
    b = eval_doc({"middle": (90, 20)})
    board = leaderboard([Input("a.json", a), Input("b.json", b)])
    assert list(board["model"]) == ["strong", "middle", "weak"]
    assert board.loc[0, "eps 8"] == pytest.approx(40 / N)
    c = eval_doc({"x": (30, 30), "y": (30, 35)}, worst=False)  # no worst rows: the lowest attack's top-1
    assert list(leaderboard([Input("c.json", c)])["model"]) == ["y", "x"]


def test_duplicate_model_labels_name_their_file() -> None:
    doc = eval_doc({"m": (10, 5)})
    board = leaderboard([Input("a.json", doc), Input("b.json", doc)])
    assert list(board["model"]) == ["m (a.json)", "m (b.json)"]


@pytest.mark.parametrize("change, needle", [
    ({"ids": [f"z{i}" for i in range(N)]}, "evaluate different data (ids sha256"),
    ({"config": {"suite": {"attacks": [{"id": "pgd", "eps": [8.0]}]}}}, "different attack suites"),
])
def test_mismatched_eval_files_exit_2_without_output(tmp_path, change, needle) -> None:
    a = write(tmp_path / "a.json", eval_doc({"m": (10, 5)}))
    other = eval_doc({"n": (10, 5)}, ids=change.get("ids"))
    b = write(tmp_path / "b.json", {**other, **{k: v for k, v in change.items() if k != "ids"}})
    out = tmp_path / "r.md"
    one_error_line(invoke("report", a, b, "-o", out), 2, needle, "a.json", "b.json")
    assert not out.exists() and not (tmp_path / "r_files").exists()


def test_output_equal_to_an_input_or_unknown_suffix_is_refused(tmp_path) -> None:
    a = write(tmp_path / "a.json", eval_doc({"m": (10, 5)}))
    before = a.read_text()
    one_error_line(invoke("report", a, "-o", a), 2, "-o")
    one_error_line(invoke("report", a, "-o", tmp_path / "r.pdf"), 2, "unknown format")
    one_error_line(invoke("report", a, "-o", "-"), 2, "-o -: the format comes from the file name's suffix")
    (tmp_path / "r_files").write_text("not a folder")
    one_error_line(invoke("report", a, "-o", tmp_path / "r.md"), 2, f"its figures go in the folder {tmp_path}/r_files",
                   "which is a file")
    assert a.read_text() == before and not (tmp_path / "r.md").exists()


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append((tag, dict(attrs)))


def test_html_is_self_contained(cli_files, tmp_path) -> None:
    out = tmp_path / "r.html"
    assert invoke("report", *cli_files.values(), "-o", out, "-q").exit_code == 0
    parser = _Tags()
    parser.feed(out.read_text())
    parser.close()
    names = [t for t, _ in parser.tags]
    assert "script" not in names and "link" not in names and names.count("svg") >= 3
    external = [(t, a) for t, a in parser.tags for k in ("src", "href", "xlink:href")
                if str(a.get(k, "")).startswith(("http:", "https:", "//"))]
    assert external == []
    # each figure's ids are its own (matplotlib names every figure's elements alike), and every
    # internal reference points at an id that exists
    import re

    text = out.read_text()
    ids = [a["id"] for _, a in parser.tags if "id" in a]
    assert len(ids) == len(set(ids)) and len(ids) > 100
    refs = set(re.findall(r'(?:href="|url\()#([^")]+)', text))
    assert refs and refs <= set(ids)


def test_markdown_references_pngs_that_exist(cli_files, tmp_path) -> None:
    import re

    out = tmp_path / "r.md"
    assert invoke("report", *cli_files.values(), "-o", out, "-q").exit_code == 0
    refs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", out.read_text())
    assert len(refs) == 3
    for ref in refs:
        png = out.parent / ref
        assert not Path(ref).is_absolute() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_same_file_twice_is_refused(tmp_path: Path) -> None:
    from robench.errors import RobenchError
    from robench.render.report_doc import load_inputs

    one = tmp_path / "a.json"
    one.write_text("{}")
    with pytest.raises(RobenchError) as e:
        load_inputs([one, tmp_path / "." / "a.json"])
    assert str(e.value) == f"{tmp_path / '.' / 'a.json'} is given twice (also as {one}); give each results file once"


def test_cells_show_counts_as_integers_and_shares_with_four_decimals() -> None:
    from robench.core.text import cell_text

    assert [cell_text("n_fooled_source", 19.0), cell_text("n", 360.0), cell_text("top1", 0.5), cell_text("eps", 8.0),
            cell_text("top1", float("nan")), cell_text("model", "a")] == ["19", "360", "0.5000", "8", "", "a"]
    assert cell_text("n_fooled_source", 2.5) == "2.5000"  # not a count after all: shown as it is


def test_check_outputs_refuses_an_input_through_links_and_provenance_files(tmp_path: Path) -> None:
    """Issue 17: an output equal to an input (by name, symlink, hard link, a .csv's .meta.json) or to another output."""
    from robench.core.outputs import check_outputs, results_paths
    from robench.errors import RobenchError

    res, other = tmp_path / "r.csv", tmp_path / "o.md"
    res.write_text("model\n")
    (tmp_path / "soft.md").symlink_to(res)
    (tmp_path / "hard.md").hardlink_to(res)
    inputs = [*results_paths("RESULTS", res), ("--rules", None)]
    check_outputs([("-o", other), ("--plot", None), ("--summary", Path("-"))], inputs)  # all distinct: passes
    for out, needle in ((res, f"-o {res} would overwrite the input RESULTS {res};"),
                        (tmp_path / "soft.md", "(the same file)"), (tmp_path / "hard.md", "(the same file)"),
                        (tmp_path / "r.csv.meta.json", f"RESULTS {res}: its provenance file")):
        with pytest.raises(RobenchError, match=r"would overwrite the input") as error:
            check_outputs([("-o", out)], inputs)
        assert needle in str(error.value) and "give -o another file name" in str(error.value)
    with pytest.raises(RobenchError, match="--out o.csv: its provenance file o.csv.meta.json and --summary "):
        check_outputs([*results_paths("--out", Path("o.csv")), ("--summary", Path("o.csv.meta.json"))], [])


def test_eval_files_of_other_images_under_the_same_ids_exit_2(tmp_path) -> None:
    docs = [eval_doc({"m": (10, 5)}), eval_doc({"n": (10, 5)})]
    for doc, content in zip(docs, ("a" * 64, "b" * 64), strict=True):
        doc["dataset"]["content_sha256"] = content
    a, b = write(tmp_path / "a.json", docs[0]), write(tmp_path / "b.json", docs[1])
    one_error_line(invoke("report", a, b, "-o", tmp_path / "r.md"), 2, "evaluate other images under the same ids",
                   "a.json", "b.json")
    del docs[1]["dataset"]["content_sha256"]  # an older file: compared on ids alone
    write(tmp_path / "b.json", docs[1])
    assert invoke("report", a, b, "-o", tmp_path / "r.md").exit_code == 0


def test_markdown_shows_labels_as_written() -> None:
    """A label from another's results file went into Markdown raw: an <img onerror> tag, a table bar, an escape."""
    from robench.core.text import md_text, to_markdown

    assert md_text("<img src=x onerror=alert(1)>|x") == "&lt;img src=x onerror=alert(1)>\\|x"
    assert md_text("a\x1b[31m") == "a\\x1b\\[31m" and md_text("top1 drop <= 0.02") == "top1 drop <= 0.02"
    table = to_markdown(pd.DataFrame({"model": ["<b>m</b>"], "top1": [0.5]}))
    assert "| &lt;b>m&lt;/b> | 0.5000 |" in table


LINK, IMAGE = "[click me](https:evil.example)", "![x](https://evil.example/x.png)"


def _html_of(markdown: str) -> str:
    """Markdown as CommonMark with GFM tables renders it (markdown-it-py, which rich brings)."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark").enable("table").render(markdown)


def test_markdown_labels_are_text_not_links_images_or_headings() -> None:
    """Issue 26 item 8: a label such as [click me](...) became a live link, ![x](...) an image a PR comment fetches."""
    from robench.core.text import md_text, to_markdown

    labels = [LINK, IMAGE, "# big", "- item", "1. first", "`code`", "*em* _em_ ~~gone~~", "a\\[b](c)", "&amp;"]
    for label in labels:
        html = _html_of(f"- {md_text(label)}\n\n" + to_markdown(pd.DataFrame({"model": [label], "top1": [0.5]})))
        assert "<a " not in html and "<img" not in html and "<h1" not in html and "<code" not in html, label
        assert "<em" not in html and "<ol" not in html and html.count("<li>") == 1, label
    assert md_text("0.5000") == "0.5000" and md_text("-0.5") == "-0.5" and md_text("1. a") == "1\\. a"


def test_report_md_shows_markdown_labels_as_text(tmp_path: Path) -> None:
    """Labels and a file name from another's results files, through robench report's Markdown: no link, no image."""
    doc = eval_doc({LINK: (100, 80), IMAGE: (90, 70)})
    out = tmp_path / "report.md"
    result = invoke("report", write(tmp_path / "[r](https:evil.example).json", doc), "-o", out)
    assert result.exit_code == 0, result.stderr
    html = _html_of(out.read_text())
    assert "<a " not in html and html.count("<img") == 1  # the report's own figure, nothing from a label
    assert LINK in html and "[r](https:evil.example).json" in html


def test_report_md_shows_every_share_in_percent(tmp_path: Path) -> None:
    """Issue 26 item 11: report.md's leaderboard was in percent and its row tables in shares (0.9889); one unit."""
    out = tmp_path / "report.md"
    assert invoke("report", write(tmp_path / "a.json", eval_doc({"m": (100, 80)})), "-o", out).exit_code == 0
    text = out.read_text()
    assert "| 95.0 |" in text and "| top1 (%) |" in text and "0.9500" not in text and "0.4750" not in text
    assert "| 52.5 |" in text  # fgsm eps 4: 105 of 200


def test_robust_columns_are_per_threat_model() -> None:
    from robench.render.report_doc import _robust

    rows = pd.DataFrame([{"attack": a, "norm": n, "eps": e, "top1": t} for a, n, e, t in (
        ("clean", None, 0.0, 0.9), ("pgd", "linf", 8.0, 0.5), ("worst", "linf", 8.0, 0.4),
        ("pgd-l2", "l2", 0.5, 0.6), ("worst-l2", "l2", 0.5, 0.3))])
    assert _robust(rows) == {"eps 8": 0.4, "eps 0.5 (L2)": 0.3}
    assert _robust(rows.drop(columns="norm").iloc[:3]) == {"eps 8": 0.4}  # a file older than L2

"""Regenerate the measured figures of the README and the docs pages, or check that they still match.

Each generated block sits, once, in README.md or one of docs/*.md, between
``<!-- figures:NAME -->`` and ``<!-- /figures:NAME -->``; a block may move between those
pages and is found wherever it is. ``--write`` replaces the blocks with fresh output;
``--check`` recomputes them and exits 1, with a diff, when the text around the figures
differs or a figure lies outside its tolerance.

Floating-point results differ across CPU kinds and thread counts, and one flipped sample is
what a different machine gives, so figures are compared within one sample's worth, never
bit for bit: a percentage over n samples within 100/n points, plus 0.1 for rounding both
sides to one decimal; a leak-check gap or interval end within twice that (a flipped
discordant sample moves the gap by 100/n and the interval's width a little too); a count
within 1; a transfer rate within 100 over its own denominator (n_fooled_source); a mean of
rates within the most one sample flipping on one model can move it (``_rate_tol``). Where
robust sources fool a handful of samples that is tens of points: those means are that
unstable. Spaces and table rules may change width with the figures; other text must match.
Everything runs on one CPU thread, as the pages say.

Fast blocks (the CI test runs them, about a minute on one thread): ``eval-default`` and
``eval-finding`` (``robench eval``), ``leak-zoo`` (``robench leak-check``),
``leak-fashion-mnist`` (``robench leak-check`` on the zoo's three Fashion-MNIST models, 2,000 images,
about 40 s; skipped, and said, where the Debian package dataset-fashion-mnist is missing) and
``transfer-fgsm16`` (fgsm at eps 16 of the documented ``robench transfer-matrix`` on four zoo
models; per-sample outcomes do not depend on the other attacks or eps, so only that part
runs). Slow blocks (``--all``, about five CPU-minutes more): ``zoo-table`` (``robench eval
zoo:... --eps 8,16`` on the six zoo models), ``transfer-summary`` and ``transfer-finding``
(the whole transfer matrix). Figures from bench/ scripts (AutoAttack, capacity, overhead
ratios, the leak search) take minutes to hours and are not generated here; ``ELSEWHERE``
lists them with the command the pages name beside each. Not generated either: prose that
repeats a table's figures (the zoo findings, the transfer bullet's 1.9 points over 240
cells) and the one --threads timing (196 s against 30 s).

    python docs/readme_figures.py --check          # fast blocks
    python docs/readme_figures.py --write --all    # regenerate every block
"""

from __future__ import annotations

import argparse
import difflib
import io
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
N_DIGITS = 360  # the digits test split, every generated figure's n
ROUNDING = 0.1  # both sides printed to one decimal
NUMBER = r"[-+]?\d+(?:\.\d+)?"
FIGURE = re.compile(r"\x00([^\x01]*)\x01([^\x02]*)\x02")  # a figure and its tolerance, as generators mark them
ZOO_MODELS = ("effnet-base", "effnet-stepll", "effnet-fgsm-true", "effnet-fgsm-pred", "resnet-base", "resnet-stepll")
TRANSFER_MODELS = ("effnet-base", "effnet-stepll", "resnet-base", "resnet-stepll")
LEAK_ROWS = (("effnet-fgsm-true", 8), ("effnet-fgsm-true", 16), ("effnet-fgsm-pred", 8), ("effnet-stepll", 8))
LEAK_FM_MODELS = ("fm-resnet-fgsm-true", "fm-resnet-fgsm-pred", "fm-resnet-stepll")  # a leak and two controls
LEAK_FM_LIMIT = 2000
LEAK_FM_ROWS = tuple((m, eps) for m in LEAK_FM_MODELS for eps in (8, 16, 76.5))
ELSEWHERE = (  # figures not generated here: what they are, and the command the pages name beside them
    ("AutoAttack table and its cost ratios", "python bench/autoattack.py --table"),
    ("paper suite and early stopping against torchattacks", "bench/early_stop.py"),
    ("capacity table", "bench/capacity.py"),
    ("leak search", "bench/leak_search.py"),
    ("eval overhead ratios", "bench/eval_overhead.py"),
    ("transfer overhead ratios", "bench/transfer_overhead.py"),
    ("train overhead ratio", "bench/train_overhead.py"),
    ("torchrun scaling", "bench/scaling.py"),
    ("zoo rebuild accuracy", "python -m robench.train.zoo_build"),
    ("LeNet from a factory", "robench train --arch examples/lenet.py:LeNet"),
)


def fig(text: str, tol: float) -> str:
    """Mark ``text`` as a figure that may move by ``tol`` on another machine."""
    return f"\x00{text}\x01{tol:g}\x02"


def pct_tol(n: int) -> float:
    """One sample's worth of a percentage over n samples, plus rounding."""
    return 100 / n + ROUNDING


def plain(marked: str) -> str:
    """The page text of a generated block: the figure marks removed."""
    return FIGURE.sub(lambda m: m.group(1), marked)


# ---------------------------------------------------------------- runs (each once per process)


def _run(**fields: Any) -> Any:
    from robench.run.runspec import RunSpec

    return RunSpec(threads=1, health_probes=False, **fields)


@cache
def eval_default() -> Any:
    """``robench eval``: the zoo's default pair under the paper suite."""
    from robench.run.evaluate import EvalConfig, run_eval

    return run_eval(EvalConfig((), _run()))


@cache
def eval_zoo() -> Any:
    """``robench eval zoo:... --eps 8,16`` on the six zoo models."""
    from robench.attacks.suite import load_suite, override
    from robench.run.evaluate import EvalConfig, run_eval

    suite = override(load_suite(), (), (8.0, 16.0))
    return run_eval(EvalConfig(tuple(f"zoo:{m}" for m in ZOO_MODELS), _run(suite=suite)))


@cache
def leak_default() -> Any:
    """``robench leak-check``: its default models and eps."""
    from robench.run.evaluate import EvalConfig
    from robench.run.leak import DEFAULT_EPS, DEFAULT_MODELS, LeakConfig, leak_suite, run_leak_check

    return run_leak_check(LeakConfig(EvalConfig(DEFAULT_MODELS, _run(suite=leak_suite(DEFAULT_EPS)))))


@cache
def leak_fashion_mnist() -> Any:
    """``robench leak-check zoo:fm-resnet-fgsm-true zoo:fm-resnet-fgsm-pred zoo:fm-resnet-stepll --limit 2000``."""
    from robench.run.evaluate import EvalConfig
    from robench.run.leak import LeakConfig, default_eps, leak_suite, run_leak_check

    models = tuple(f"zoo:{m}" for m in LEAK_FM_MODELS)
    run = _run(suite=leak_suite(default_eps(models)), data="fashion-mnist", limit=LEAK_FM_LIMIT)
    return run_leak_check(LeakConfig(EvalConfig(models, run)))


@cache
def transfer(attacks: tuple[str, ...] = (), eps: tuple[float, ...] | None = None) -> Any:
    """``robench transfer-matrix`` on four zoo models, optionally only some attacks and eps."""
    from robench.attacks.suite import load_suite, override
    from robench.run.transfer import TransferConfig, run_transfer

    suite = override(load_suite(), attacks, eps)
    return run_transfer(TransferConfig(tuple(f"zoo:{m}" for m in TRANSFER_MODELS), run=_run(suite=suite)))


# ---------------------------------------------------------------- blocks


def eval_default_block() -> str:
    """The rich table ``robench eval`` prints, as the README shows it."""
    from rich.console import Console

    from robench.attacks.suite import load_suite
    from robench.render.tables import results_table

    buffer = io.StringIO()
    Console(file=buffer, width=160, color_system=None).print(results_table(eval_default().rows, suite=load_suite()))
    text = "\n".join(line.rstrip() for line in buffer.getvalue().splitlines())
    tol = pct_tol(N_DIGITS)
    return "```\n" + re.sub(r"\d+\.\d", lambda m: fig(m.group(0), tol), text) + "\n```"


def _top1(rows: Any, model: str, attack: str, eps: float) -> str:
    row = rows[(rows["model"] == model) & (rows["attack"] == attack) & (rows["eps"] == eps)].iloc[0]
    return fig(f"{100 * row.top1:.1f}", pct_tol(int(row.n)))


def eval_finding_block() -> str:
    """The paragraph on the paper's first finding, from the same run."""
    rows = eval_default().rows

    def t(model: str, attack: str) -> str:
        return _top1(rows, f"effnet-{model}", attack, 8.0)

    return (f"The paper's first finding holds here: the step l.l.-trained model keeps {t('stepll', 'fgsm')}% top-1\n"
            f"under FGSM and {t('stepll', 'step_ll')}% under step l.l. at eps 8/255, where the baseline keeps "
            f"{t('base', 'fgsm')}% and\n{t('base', 'step_ll')}%, and {t('stepll', 'worst')}% in the worst case, "
            f"where the baseline keeps {t('base', 'worst')}% (AutoAttack's verdict\nis in "
            "[Robust accuracy](docs/robust-accuracy.md)). The paper's second observation, that this advantage\n"
            "shrinks under iterative attacks, does not reproduce on this small task; see\n"
            "[Training and the zoo](docs/training.md#the-zoo).")


def zoo_table_block() -> str:
    """Top-1 of the six zoo models at eps 8 and 16 under the paper suite."""
    rows = eval_zoo().rows
    attacks = ("fgsm", "step_ll", "bim", "iter_ll", "pgd")
    head = ["model", "clean", *(f"{a} {e}" for e in (8, 16) for a in attacks)]
    lines = [_md_row(head), _rule(len(head))]
    for m in ZOO_MODELS:
        cells = [_top1(rows, m, "clean", 0.0), *(_top1(rows, m, a, float(e)) for e in (8, 16) for a in attacks)]
        lines.append(_md_row([m, *cells]))
    return "\n".join(lines)


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _rule(columns: int) -> str:
    return "|" + "---|" * columns


def _gap(r: Any, name: str, tol: float) -> str:
    value, low, high = (100 * getattr(r, f"{name}{s}") for s in ("", "_low", "_high"))
    return f"{fig(f'{value:+.1f}', tol)} [{fig(f'{low:+.1f}', tol)}, {fig(f'{high:+.1f}', tol)}]"


def leak_block() -> str:
    """The documented rows of ``robench leak-check``'s table (its verdicts come from every eps)."""
    return _leak_rows(leak_default().rows, LEAK_ROWS)


def leak_fashion_mnist_block() -> str:
    """The zoo's leaking Fashion-MNIST model and its controls: eps 8, 16 and the 76.5 they were trained at."""
    return _leak_rows(leak_fashion_mnist().rows, LEAK_FM_ROWS)


def _leak_rows(rows: Any, chosen: tuple[tuple[str, float], ...]) -> str:
    head = ["model", "eps", "clean", "fgsm true", "fgsm pred", "step_ll", "leak_gap", "adv - clean", "verdict"]
    lines = [_md_row(head), _rule(len(head))]
    for model, eps in chosen:
        r = next(rows[(rows["model"] == model) & (rows["eps"] == float(eps))].itertuples())
        tol = pct_tol(int(r.n))
        accs = [fig(f"{100 * getattr(r, c):.1f}", tol)
                for c in ("clean_top1", "fgsm_true_top1", "fgsm_predicted_top1", "step_ll_top1")]
        gap_tol = 2 * 100 / int(r.n) + ROUNDING
        lines.append(_md_row([model, f"{eps:g}", *accs, _gap(r, "leak_gap", gap_tol),
                              _gap(r, "adv_minus_clean", gap_tol), r.verdict]))
    return "\n".join(lines)


def _cells(rows: Any, attack: str, eps: float) -> Any:
    return rows[(rows["attack"] == attack) & (rows["eps"] == eps)]


def transfer_fgsm16_block() -> str:
    """The sentence naming each source's n_fooled_source and the fgsm eps 16 transfer matrix."""
    cells = _cells(transfer(("fgsm",), (16.0,)).rows, "fgsm", 16.0)
    n = {s: int(cells[(cells["source"] == s) & (cells["target"] != s)]["n_fooled_source"].iloc[0])
         for s in TRANSFER_MODELS}
    counts = ", ".join(f"{s} {fig(str(n[s]), 1)}" for s in TRANSFER_MODELS)
    lines = ["Measured on the zoo (360 digits test images, default suite; `robench transfer-matrix",
             "zoo:effnet-base zoo:effnet-stepll zoo:resnet-base zoo:resnet-stepll`), the paper's transfer",
             "rate % at eps 16/255, FGSM (sources as rows; `n_fooled_source` per source: "
             + counts.replace(", effnet-stepll", ",\neffnet-stepll", 1) + "):", "",
             _md_row(["source \\ target", *TRANSFER_MODELS]), _rule(len(TRANSFER_MODELS) + 1)]
    for s in TRANSFER_MODELS:
        row = cells[cells["source"] == s].set_index("target")
        lines.append(_md_row([s, *(fig(f"{100 * row.loc[t, 'transfer_rate']:.1f}", pct_tol(n[s]))
                                   for t in TRANSFER_MODELS)]))
    return "\n".join(lines)


def _mean_rate(cells: Any, column: str) -> str:
    """A mean of off-diagonal rates, tolerating one sample in each cell's own denominator."""
    return fig(f"{100 * cells[column].mean():.1f}", _rate_tol(cells, column))


def transfer_summary_block() -> str:
    """Mean off-diagonal transfer rate per attack and eps, the paper's and the both-clean variant."""
    rows = transfer().rows
    off = rows[(rows["attack"] != "clean") & (rows["source"] != rows["target"])]
    attacks = list(dict.fromkeys(off["attack"]))
    lines = [_md_row(["eps", *attacks]), _rule(len(attacks) + 1)]
    for eps in sorted(off["eps"].unique()):
        cells = [f"{_mean_rate(_cells(off, a, eps), 'transfer_rate')} "
                 f"({_mean_rate(_cells(off, a, eps), 'transfer_rate_both_clean')})" for a in attacks]
        lines.append(_md_row([f"{eps:g}", *cells]))
    return "\n".join(lines)


PROSE_CELL = ("resnet-stepll", "effnet-base", "step_ll")  # the transfer paragraph's example of a small denominator


def _pts(value: float, tol: float) -> str:
    return fig(f"{value:.1f}", tol)


def _gap_range(off: Any, single: str, iterative: str) -> str:
    """How far single-step transfer lies above its iterative counterpart: the smallest and largest gap over eps.

    The gaps are between the summary table's rounded means, so that the prose agrees with the table.
    """
    gaps = []
    for eps in sorted(off["eps"].unique()):
        a, b = _cells(off, single, eps), _cells(off, iterative, eps)
        gaps.append((round(100 * a["transfer_rate"].mean(), 1) - round(100 * b["transfer_rate"].mean(), 1),
                     _rate_tol(a, "transfer_rate") + _rate_tol(b, "transfer_rate")))
    return f"{_pts(*min(gaps))} to {_pts(*max(gaps))}"


def _rate_tol(cells: Any, column: str) -> float:
    """How far one flipped sample can move the mean of these cells' rates, plus rounding.

    A sample flips on one model: as a source it can enter or leave the denominator of that
    source's cells, as a target the numerator of that target's; each cell moves by at most
    100 over its own denominator.
    """
    denominators = cells[column.replace("transfer_rate", "n_fooled_source")].astype(float)
    kept = cells[denominators > 0]
    if kept.empty:
        return ROUNDING
    moves = 100 / denominators[denominators > 0]
    worst = max(moves.groupby(kept[side]).sum().max() for side in ("source", "target"))
    return float(worst) / len(kept) + ROUNDING


def _of(row: Any, column: str) -> str:
    n = int(row[column.replace("transfer_rate", "n_fooled_source")])
    return f"{fig(str(round(row[column] * n)), 1)} of {fig(str(n), 1)}"


def transfer_finding_block() -> str:
    """The paragraph on finding 2 and on the two transfer-rate definitions, from the whole matrix."""
    rows = transfer().rows
    off = rows[(rows["attack"] != "clean") & (rows["source"] != rows["target"])]
    both = off.dropna(subset=["transfer_rate", "transfer_rate_both_clean"])
    diff = 100 * (both["transfer_rate"] - both["transfer_rate_both_clean"])
    tol = _rate_tol(both, "transfer_rate") + _rate_tol(both, "transfer_rate_both_clean")
    widest = both.loc[diff.idxmax()]
    widest_tol = 100 / widest.n_fooled_source + 100 / widest.n_fooled_source_both_clean + 1  # printed as integers
    source, target, attack = PROSE_CELL
    cell = off[(off["source"] == source) & (off["target"] == target) & (off["attack"] == attack)].set_index("eps")
    e8, e16 = cell.loc[8.0], cell.loc[16.0]
    paper16 = _pts(100 * e16.transfer_rate, 100 / e16.n_fooled_source + ROUNDING)
    both16 = _pts(100 * e16.transfer_rate_both_clean, 100 / e16.n_fooled_source_both_clean + ROUNDING)
    return (
        "The paper's finding 2 shows at every eps: single-step attacks transfer at a higher rate\n"
        f"than their iterative counterparts (fgsm over bim by {_gap_range(off, 'fgsm', 'bim')} points, step_ll over "
        f"iter_ll\nby {_gap_range(off, 'step_ll', 'iter_ll')} points). The gap between fgsm and bim is small here. "
        "At small eps the two\ndefinitions part most: the paper's counts a target already wrong on the clean image "
        "as\nfooled, and the robust sources fool few samples. "
        f"Over the {len(off)} off-diagonal cells the paper's\nrate is {_pts(diff.mean(), tol)} points higher on "
        f"average and up to {fig(f'{diff.max():.0f}', widest_tol)} points where the denominators are small\n"
        f"({source} to {target}, {attack} at eps 8: {_of(e8, 'transfer_rate')} against "
        f"{_of(e8, 'transfer_rate_both_clean')}; at eps 16: {paper16}%\nagainst {both16}%). "
        "Examples crafted on the plainly trained models hardly transfer between\nthese two very different tiny "
        "architectures; those crafted on the step l.l. models\ntransfer far more."
    )


@dataclass(frozen=True)
class Block:
    """A generated block: its name, its generator, whether the CI test runs it, and data it needs installed."""

    name: str
    generate: Callable[[], str]
    fast: bool
    needs_fashion_mnist: bool = False  # skipped where the Debian package dataset-fashion-mnist is not installed

    def skipped(self) -> str | None:
        """Why this machine cannot generate the block, or None."""
        from robench.data.idx import FASHION_MNIST_DIR

        if self.needs_fashion_mnist and not FASHION_MNIST_DIR.is_dir():
            return "needs the Debian package dataset-fashion-mnist"
        return None


BLOCKS = (
    Block("eval-default", eval_default_block, True),
    Block("eval-finding", eval_finding_block, True),
    Block("zoo-table", zoo_table_block, False),
    Block("transfer-fgsm16", transfer_fgsm16_block, True),
    Block("transfer-summary", transfer_summary_block, False),
    Block("transfer-finding", transfer_finding_block, False),
    Block("leak-zoo", leak_block, True),
    Block("leak-fashion-mnist", leak_fashion_mnist_block, True, needs_fashion_mnist=True),
)


# ---------------------------------------------------------------- blocks in the pages: find, read, compare, write


def pages() -> list[Path]:
    """The files that may hold blocks: the README and the docs site's pages."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _span(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- figures:{re.escape(name)} -->\n)(.*?)(\n<!-- /figures:{re.escape(name)} -->)", re.S)


def locate(name: str) -> Path:
    """The one page that holds block ``name``."""
    found = [page for page in pages() if _span(name).search(page.read_text(encoding="utf-8"))]
    if len(found) != 1:
        where = ", ".join(str(p.relative_to(REPO)) for p in found) or "none of README.md and docs/*.md"
        raise SystemExit(f"block {name} must be in one page, found in {where}: "
                         f"<!-- figures:{name} --> ... <!-- /figures:{name} -->")
    return found[0]


def page_block(text: str, name: str) -> str:
    """A page's current text of block ``name``."""
    found = _span(name).search(text)
    if found is None:
        raise SystemExit(f"no block {name}: add <!-- figures:{name} --> ... <!-- /figures:{name} -->")
    return found.group(2)


def replace_block(text: str, name: str, new: str) -> str:
    """``text`` with block ``name`` replaced by ``new``."""
    page_block(text, name)
    return _span(name).sub(lambda m: m.group(1) + new + m.group(3), text, count=1)


def _pattern(marked: str) -> re.Pattern[str]:
    """A regex of the block's text with each figure a group; spaces and table rules may change width."""
    parts, end = [], 0
    for m in FIGURE.finditer(marked):
        parts += [_loose(marked[end:m.start()]), f"({NUMBER})"]
        end = m.end()
    return re.compile("".join([*parts, _loose(marked[end:])]) + r"\Z")


def _loose(text: str) -> str:
    out = re.escape(text)
    out = re.sub(r"(?:\\ )+", lambda _: r" *", out)
    return re.sub(r"([━─])+", lambda m: f"{m.group(1)}+", out)


def compare(written: str, marked: str) -> list[str]:
    """Why a page's block differs from the generated one: text outside figures, or figures beyond tolerance."""
    found = _pattern(marked).match(written)
    if found is None:
        diff = difflib.unified_diff(written.splitlines(), plain(marked).splitlines(), "written", "generated",
                                    lineterm="")
        return ["text differs:", *diff]
    problems = []
    for i, (have, (new, tol)) in enumerate(zip(found.groups(), FIGURE.findall(marked), strict=True), start=1):
        if abs(float(have) - float(new)) > float(tol) + 1e-9:
            line = written.count("\n", 0, found.start(i)) + 1
            problems.append(f"figure {i} (block line {line}): written {have}, generated {new} (tolerance {tol})")
    return problems


def chosen_blocks(names: list[str], every: bool) -> list[Block]:
    """The named blocks, else every block (``every``) or the fast ones."""
    unknown = sorted(set(names) - {b.name for b in BLOCKS})
    if unknown:
        raise SystemExit(f"no block {', '.join(unknown)}; blocks: {', '.join(b.name for b in BLOCKS)}")
    return [b for b in BLOCKS if b.name in names or (not names and (every or b.fast))]


def check(blocks: list[Block]) -> bool:
    """Print each block's page, verdict and problems; True when all match."""
    ok = True
    for block in blocks:
        page = locate(block.name)
        if block.skipped():
            print(f"{block.name} ({page.relative_to(REPO)}): skipped, {block.skipped()}")
            continue
        problems = compare(page_block(page.read_text(encoding="utf-8"), block.name), block.generate())
        print(f"{block.name} ({page.relative_to(REPO)}): {'DIFFERS' if problems else 'ok'}",
              *(f"  {p}" for p in problems), sep="\n")
        ok &= not problems
    return ok


def write(blocks: list[Block]) -> None:
    """Replace each block, in whichever page holds it, with fresh output."""
    texts: dict[Path, str] = {}
    for block in blocks:
        page = locate(block.name)
        if block.skipped():
            print(f"{block.name}: not written, {block.skipped()}")
            continue
        text = texts.get(page) or page.read_text(encoding="utf-8")
        texts[page] = replace_block(text, block.name, plain(block.generate()))
    for page, text in texts.items():
        page.write_text(text, encoding="utf-8")
        print(f"wrote {page.relative_to(REPO)}")


def main(argv: list[str] | None = None) -> int:
    """--write or --check the blocks (the fast ones unless --all, or the named ones)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="replace the blocks with fresh output")
    mode.add_argument("--check", action="store_true", help="exit 1 when a block differs beyond tolerance")
    parser.add_argument("--all", action="store_true", help="slow blocks too (a few minutes on one thread)")
    parser.add_argument("blocks", nargs="*", metavar="NAME", help="only these blocks")
    args = parser.parse_args(argv)
    blocks = chosen_blocks(args.blocks, args.all)
    if args.check:
        return 0 if check(blocks) else 1
    write(blocks)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())

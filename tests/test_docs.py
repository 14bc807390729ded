"""The docs site builds offline with ``mkdocs build --strict``, and its CLI reference documents every command.

Strict mode (with mkdocs.yml's ``validation`` at ``warn``) fails on a broken link or anchor,
a page left out of the nav, or a mkdocs-click directive that cannot import the CLI. The
reference is generated from the commands' own ``--help``; this checks that the generated
page names every command and every option of the Click group, each in its command's section.
"""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from robench.analysis import health
from robench.cli.main import EXIT_CODES, main

REPO = Path(__file__).resolve().parents[1]
HEADING = re.compile(r'<h[1-6] id="(robench[a-z-]*)"')


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built once into a temporary folder (a few seconds)."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                          str(REPO / "mkdocs.yml"), "--site-dir", str(out)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "WARNING" not in run.stderr, run.stderr
    return out


def commands(command: click.Command, path: str = "robench") -> Iterator[tuple[str, click.Command]]:
    """Every command of the group, the group included, as (its path, the command)."""
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from commands(sub, f"{path} {name}")


def sections(page: str) -> dict[str, str]:
    """The CLI reference's text per command heading id (robench-eval, robench-baseline-update, ...)."""
    parts = HEADING.split(page)
    return {key: html.unescape(re.sub(r"<[^>]+>", "", text))
            for key, text in zip(parts[1::2], parts[2::2], strict=True)}


def names(param: click.Parameter, ctx: click.Context) -> list[str]:
    """What --help shows for a parameter: an option's every spelling, an argument's metavar."""
    if isinstance(param, click.Option):
        return [*param.opts, *param.secondary_opts]
    return [param.make_metavar(ctx)]


def test_site_builds_offline_with_every_page_in_the_nav(site: Path) -> None:
    pages = {p.stem for p in (REPO / "docs").glob("*.md")}
    built = {p.parent.name for p in site.glob("*/index.html")} | {"index"}
    assert pages <= built, pages - built
    text = "".join(p.read_text(encoding="utf-8") for p in site.rglob("*.html"))
    assert "fonts.googleapis.com" not in text and "fonts.gstatic.com" not in text


def test_cli_reference_documents_every_command_and_option(site: Path) -> None:
    found = sections((site / "cli" / "index.html").read_text(encoding="utf-8"))
    missing = []
    for path, command in commands(main):
        text = found.get(path.replace(" ", "-"))
        if text is None:
            missing.append(path)
            continue
        ctx = click.Context(command, info_name=path)
        for param in command.params:
            if getattr(param, "hidden", False):
                continue
            missing += [f"{path} {n}" for n in names(param, ctx)
                        if not re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", text)]
    assert len(found) >= 13 and missing == []


def test_every_option_has_help() -> None:
    """The reference is --help: an option without help shows only its name (--batch-size N, --epochs N)."""
    bare = [f"{path} {param.opts[-1]}" for path, command in commands(main) for param in command.params
            if isinstance(param, click.Option) and not param.hidden and not (param.help or "").strip()]
    assert bare == []


def test_each_health_check_has_one_anchor_on_the_page_its_flags_link(site: Path) -> None:
    page = (site / "health" / "index.html").read_text(encoding="utf-8")
    for check in health.CHECKS.values():
        path, _, anchor = check.docs.partition("#")
        assert path == "docs/health.md" and (REPO / path).is_file()
        assert len(re.findall(rf'\bid="{re.escape(anchor)}"', page)) == 1, anchor


def _exit_codes(text: str) -> list[str]:
    return re.findall(r"^\| (\d+) \|", text, re.M)


def test_exit_codes_agree_in_help_readme_and_docs() -> None:
    codes = re.findall(r"^\s+(\d+)\s", EXIT_CODES, re.M)
    assert codes == ["0", "1", "2", "3", "130", "143"]
    for page in (REPO / "README.md", REPO / "docs" / "cli.md"):
        assert _exit_codes(page.read_text(encoding="utf-8")) == codes, page


def test_readme_is_a_front_page() -> None:
    """About 250 lines; the set-up block is the CPU hint and the two commands, the second the one CI runs."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 300
    setup = text.split("## Set-up\n\n```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert setup[0].startswith("# no GPU? first: pip install torch") and "download.pytorch.org/whl/cpu" in setup[0]
    assert setup[1:] == ["pip install -e . && robench eval", 'pip install -e ".[test]" && python -m pytest']
    assert setup[2] in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    table = text.split("## Commands\n", 1)[1].split("\n## ", 1)[0]
    leaves = [path for path, command in commands(main) if not isinstance(command, click.Group)]
    assert [p for p in leaves if f"| `{p}" not in table] == []


def test_readme_links_reach_docs_pages_and_anchors(site: Path) -> None:
    """The README is not part of the site, so strict mode does not see its links: check them on the built pages."""
    links = re.findall(r"\]\(docs/([\w-]+)\.md(?:#([\w-]+))?\)", (REPO / "README.md").read_text(encoding="utf-8"))
    assert len(links) >= 15
    for page, anchor in links:
        built = site / ("" if page == "index" else page) / "index.html"
        assert built.is_file(), page
        assert not anchor or f'id="{anchor}"' in built.read_text(encoding="utf-8"), f"{page}#{anchor}"

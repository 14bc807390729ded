"""mypy over robench/ and cli/, with the settings of pyproject.toml's [tool.mypy]: zero errors."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_mypy_finds_no_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from mypy import api  # in the test extra

    monkeypatch.chdir(ROOT)  # mypy reads its files and settings from the pyproject.toml of the folder it runs in
    stdout, stderr, status = api.run([])
    assert status == 0, f"mypy exited {status}:\n{stdout}{stderr}"

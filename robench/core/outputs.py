"""Output paths checked before any work: known suffixes, writable, distinct, never an input."""

from __future__ import annotations

import os
from pathlib import Path

from robench.core.files import STDOUT, kind_of, output_problem, same_output, stream_fd
from robench.errors import FieldError, RobenchError

RESULT_SUFFIXES = (".json", ".csv", ".md")
PER_SAMPLE_SUFFIXES = (".csv", ".parquet")


def check_output(path: Path | None, suffixes: tuple[str, ...] = RESULT_SUFFIXES, field: str = "out",
                 stdout: bool = False, regular: bool = False) -> None:
    """Fail before any work if ``path`` has an unknown suffix or cannot take an output (robench.core.files).

    ``stdout``: ``-`` writes to standard output (where the format does not come from the suffix).
    A ``.csv`` results file's ``.meta.json`` beside it is checked too. Raises FieldError naming
    ``field``, the option the CLI names (or the CLI's own word for it, such as ``BASELINE``).
    ``regular``: the output is a file kept for later (results, a checkpoint), so an existing path must be a
    regular file; a named pipe or device would take the bytes and keep nothing (a reader of /dev/zero never ends).
    """
    if path is None:
        return
    if str(path) == STDOUT:
        if stdout:
            return
        raise FieldError(field, f"{{name}} -: the format comes from the file name's suffix ({', '.join(suffixes)}), "
                                "so standard output cannot be one; give a file name")
    kind = kind_of(path) if stream_fd(path) is None else None
    if kind == "a folder":
        raise FieldError(field, f"{{name}} {path} is a folder; give a file name, e.g. {path / ('out' + suffixes[0])}")
    if path.suffix.lower() not in suffixes:
        raise FieldError(field, f"{{name}} {path}: unknown format '{path.suffix}'; use one of {', '.join(suffixes)}")
    if regular and kind is not None:
        raise FieldError(field, f"{{name}} {path} is {kind}, not a regular file; give a file name to write")
    problem = output_problem(path)
    if problem is not None:
        raise FieldError(field, f"{{name}} {path}{' ' if problem.startswith('is ') else ': '}{problem}")
    side = meta_path(path)
    problem = output_problem(side) if suffixes == RESULT_SUFFIXES and path.suffix.lower() == ".csv" else None
    if problem is not None:  # the provenance goes beside a .csv: found only after the run, it cost the run
        raise FieldError(field, f"{{name}} {path}: its provenance file {side} {problem.split(';')[0]}; "
                                f"remove it or give {{name}} another name")


def check_per_sample(path: Path | None, field: str = "per_sample") -> None:
    """Fail before any work if ``path`` cannot take per-sample outcomes: ``-`` (CSV), ``.csv``, or ``.parquet``
    where pyarrow imports (the ``parquet`` extra)."""
    check_output(path, PER_SAMPLE_SUFFIXES, field, stdout=True)
    if path is not None and path.suffix.lower() == ".parquet":
        from robench.core.parquet import pyarrow_parquet

        pyarrow_parquet(field)


def check_distinct(outputs: list[tuple[str, Path | None]]) -> None:
    """Fail before any work when two outputs (option, path) name one file or stream, e.g. --junit - --summary -,
    or --out a.json --out ./a.json."""
    seen: list[tuple[str, Path]] = []
    for option, path in outputs:
        if path is None:
            continue
        for first_option, first in seen:
            if not same_output(first, path):
                continue
            if first_option == option:  # one repeatable option (--out) given the same file twice
                same = f"{option} {first} is given twice" if str(first) == str(path) else \
                    f"{option} {first} and {option} {path} are the same file"
                raise RobenchError(f"{same}; give each output once")
            what = "standard output" if stream_fd(path) is not None else "the same file"
            raise RobenchError(f"{first_option} {first} and {option} {path} both write to {what}; "
                               "give each output its own file")
        seen.append((option, path))


def results_paths(option: str, path: Path | None) -> list[tuple[str, Path | None]]:
    """A results file's (option, path) and, for a ``.csv``, its provenance file beside it."""
    if path is None or path.suffix.lower() != ".csv":
        return [(option, path)]
    return [(option, path), (f"{option} {path}: its provenance file", meta_path(path))]


def check_outputs(outputs: list[tuple[str, Path | None]], inputs: list[tuple[str, Path | None]]) -> None:
    """Fail before any work when an output would overwrite an input, or two outputs name one file or stream.

    Both lists hold (option, path); None paths are left out. An input that is a folder (an image
    folder given as data) takes no output anywhere inside it. "One file" follows symlinks and hard
    links (robench.core.files.same_output); results_paths adds what a ``.csv`` writes or reads beside it.
    """
    for option, path in outputs:
        for in_option, source in inputs:
            if path is not None and source is not None and same_output(path, source):
                same = "" if str(path) == str(source) else " (the same file)"
                raise RobenchError(f"{option} {path} would overwrite the input {in_option} {source}{same}; "
                                   f"give {option.split()[0]} another file name")
            if path is not None and source is not None and _inside(path, source):
                raise RobenchError(f"{option} {path} is inside the input folder {in_option} {source}, whose files "
                                   f"are the data; write {option.split()[0]} outside it")
    check_distinct(outputs)


def _inside(path: Path, folder: Path) -> bool:
    """Would ``path`` land inside the existing folder ``folder`` (symlinks followed)?"""
    if not folder.is_dir():
        return False
    try:
        return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))
    except OSError:
        return False


def check_inputs(inputs: list[tuple[str, Path | None]]) -> None:
    """Fail before any work when an input (option, path) does not exist, naming the option that gave it.

    The readers say "baseline file not found"; the user typed --baseline, so the option comes first.
    A .csv's provenance file (results_paths) is left to its reader, which says how the pair is written.
    """
    for option, path in inputs:
        if " " in option:
            continue
        if path is not None and stream_fd(path) is None and not os.path.lexists(path):
            raise RobenchError(f"{option}: no such file {path}")
        if path is not None and os.path.islink(path) and not os.path.exists(path):
            raise RobenchError(f"{option}: {path} is a link to {os.readlink(path)}, which does not exist")


def meta_path(path: Path) -> Path:
    """Where a ``.csv`` results file's provenance goes: ``FILE.csv.meta.json`` beside it."""
    return path.with_name(path.name + ".meta.json")

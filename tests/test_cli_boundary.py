"""Issue 26 item 11, the rest of a new user's trial at the CLI's edges: each case exits 2 with one line.

Outputs kept for later (results, checkpoints) are regular files or new paths; a path of another kind
says what it is; train checks its values before torch, as eval does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.results_docs import invoke, one_error_line
from tests.test_cli_early import NO_TORCH


@pytest.mark.slow
@pytest.mark.parametrize(("args", "needle"), [
    (["--weight-decay", "1000"], "--weight-decay"),
    (["--adv-fraction", "nan"], "--adv-fraction nan must be a finite number"),
    (["--out", "m.pt"], "--out m.pt: unknown format"),
    (["--out", "."], "--out . is a folder"),
])
def test_train_checks_its_values_before_torch(tmp_path: Path, args: list[str], needle: str) -> None:
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, "train", "-o", "m.safetensors", *args],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and lines[-1] == "torch imported: False", proc.stderr
    assert len(lines) == 2 and lines[0].startswith("robench: error: ") and needle in lines[0], proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_train_error_has_no_blank_line_before_it(tmp_path: Path) -> None:
    result = invoke("train", "-o", tmp_path / "m.safetensors", "--data", tmp_path / "none")
    assert result.exit_code == 2
    assert result.stderr.startswith("robench: error: dataset folder not found: "), repr(result.stderr)
    assert list(tmp_path.iterdir()) == []


def _special(tmp_path: Path, kind: str, name: str) -> Path:
    path = tmp_path / name
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    return path


# --attack/--arch nosuch: were the --out accepted, the run would stop at once on the name, not write to it
@pytest.mark.parametrize("command", [["eval", "--attack", "nosuch"],
                                     ["transfer-matrix", "-m", "a", "--attack", "nosuch"],
                                     ["leak-check", "--device", "cpu", "-m", "nosuch"]])
@pytest.mark.parametrize(("kind", "what"), [("fifo", "a named pipe"), ("zero", "a character device")])
def test_results_out_must_be_a_regular_file(tmp_path: Path, command: list[str], kind: str, what: str) -> None:
    out = _special(tmp_path, kind, "r.json")
    one_error_line(invoke(*command, "-o", out), 2, f"--out {out} is {what}, not a regular file")
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


@pytest.mark.parametrize(("kind", "what"), [("fifo", "a named pipe"), ("zero", "a character device")])
def test_train_checkpoint_out_must_be_a_regular_file(tmp_path: Path, kind: str, what: str) -> None:
    out = _special(tmp_path, kind, "m.safetensors")
    one_error_line(invoke("train", "--arch", "nosuch", "-o", out), 2, f"--out {out} is {what}, not a regular file")
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


@pytest.mark.parametrize(("args", "option"), [
    (["eval", "--attack", "nosuch", "-o"], "--out"), (["eval", "--attack", "nosuch", "--plot"], "--plot"),
    (["eval", "--attack", "nosuch", "--per-sample"], "--per-sample"), (["train", "--arch", "nosuch", "-o"], "--out"),
    (["report", __file__, "-o"], "-o"),
])
def test_a_folder_given_as_an_output_is_called_a_folder(tmp_path: Path, args: list[str], option: str) -> None:
    line = one_error_line(invoke(*args, tmp_path), 2, f"{option} {tmp_path} is a folder; give a file name")
    assert "unknown format" not in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("kind", "what"), [("fifo", "a named pipe"), ("zero", "a character device"),
                                            ("folder", "a folder")])
def test_a_checkpoint_that_is_no_file_says_what_it_is(tmp_path: Path, kind: str, what: str) -> None:
    path = tmp_path / "w.pth"
    if kind == "folder":
        path.mkdir()
    else:
        _special(tmp_path, kind, "w.pth")
    one_error_line(invoke("eval", "-m", f"test_resnet@{path}", "--limit", "2", "--device", "cpu"), 2,
                   f"checkpoint {path} is {what}, not a checkpoint file")


@pytest.mark.parametrize(("data", "what"), [("/dev/zero", "a character device"), ("file", "a file")])
def test_a_dataset_that_is_no_folder_says_what_it_is(tmp_path: Path, data: str, what: str) -> None:
    if data == "file":
        data = str(tmp_path / "x.txt")
        Path(data).write_text("x")
    one_error_line(invoke("eval", "--data", data, "--limit", "2", "--device", "cpu"), 2,
                   f"dataset {data} is {what}, not a folder")


@pytest.mark.parametrize("args", [["report", "{dir}/none.json", "-o", "{dir}/r.md"],
                                  ["baseline", "update", "{dir}/none.json", "{dir}/b.json"]])
def test_a_missing_input_names_its_argument(tmp_path: Path, args: list[str]) -> None:
    one_error_line(invoke(*(a.format(dir=tmp_path) for a in args)), 2, f"RESULTS: no such file {tmp_path}/none.json")
    assert list(tmp_path.iterdir()) == []


def test_transfer_matrix_needs_a_model_and_says_so() -> None:
    one_error_line(invoke("transfer-matrix"), 2, "transfer-matrix needs at least one model", "--model")
    help_text = invoke("transfer-matrix", "--help").stdout
    assert "Usage: main transfer-matrix [OPTIONS] MODEL..." in help_text
    assert "Default: zoo:" not in help_text and "At least one model" in help_text


@pytest.mark.parametrize("command", [["eval"], ["train", "-o", "{dir}/m.safetensors"]])
def test_hfds_without_datasets_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    command: list[str]) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed, wherever this runs
    result = invoke(*(a.format(dir=tmp_path) for a in command), "--data", "hfds/mnist", "--limit", "2",
                    "--device", "cpu")
    one_error_line(result, 2, "dataset hfds/mnist needs the datasets package", "pip install datasets")
    assert result.stdout == "" and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("args", "shown"), [(["--std", "0,1"], "--std must be > 0 for every channel, got 0,1"),
                                             (["--mean", "nan"], "--mean must be one finite number per channel, "
                                                                 "got nan")])
def test_mean_and_std_are_shown_as_typed(args: list[str], shown: str) -> None:
    line = one_error_line(invoke("eval", *args), 2, shown)
    assert "(" not in line


def test_leak_check_eps_default_reads_as_a_list() -> None:
    text = " ".join(invoke("leak-check", "--help").stdout.split())
    assert "Default: 2,4,8,16 and the eps each model" in text and "(2,4,8,16)" not in text


@pytest.mark.parametrize("group", [[], ["zoo"], ["baseline"]])
def test_a_group_without_a_command_prints_its_help_on_stderr_and_exits_2(group: list[str]) -> None:
    """As docs/cli.md says: a usage error (exit 2), its help on stderr, nothing on stdout, no "error:" line."""
    result = invoke(*group)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith("Usage: ") and "Commands:" in result.stderr
    assert "robench: error:" not in result.stderr
    docs = " ".join((Path(__file__).parents[1] / "docs" / "cli.md").read_text(encoding="utf-8").split())
    assert "`robench baseline` without a subcommand print their help on stderr and exit 2" in docs


def test_train_config_takes_the_cli_names() -> None:
    from robench.cli.main import main as group
    from robench.cli.main import option
    from robench.errors import FieldError
    from robench.models.recipe import TrainConfig
    from robench.train.loop import _recipe

    cfg = TrainConfig(image_size=16, train_attack="none")
    assert (cfg.image_size, cfg.train_attack) == (16, "none")
    with pytest.raises(FieldError) as caught:
        TrainConfig(image_size=4)
    assert caught.value.field == "image_size" and option("image_size", group.commands["train"]) == "--image-size"
    with pytest.raises(FieldError) as caught:
        TrainConfig(train_attack="cw")
    assert caught.value.field == "train_attack" and option("train_attack", group.commands["train"]) == \
        "--train-attack"
    recipe = _recipe(cfg)  # the checkpoint's keys stay as they were (the zoo's files do not change)
    assert (recipe["input_size"], recipe["attack"]) == (16, "none") and "image_size" not in recipe


def test_train_config_old_names_work_for_one_release_with_a_warning() -> None:
    from robench.errors import FieldError
    from robench.models.recipe import TrainConfig

    with pytest.warns(DeprecationWarning) as heard:
        cfg = TrainConfig(input_size=16, attack="fgsm")
    assert sorted(str(w.message) for w in heard) == ["TrainConfig(attack=...) is deprecated; use train_attack=",
                                                     "TrainConfig(input_size=...) is deprecated; use image_size="]
    assert (cfg.image_size, cfg.train_attack) == (16, "fgsm")
    with pytest.warns(DeprecationWarning, match=r"TrainConfig.attack is deprecated; use .train_attack"):
        assert cfg.attack == "fgsm"
    with pytest.warns(DeprecationWarning), pytest.raises(FieldError) as caught:
        TrainConfig(input_size=4)
    assert caught.value.field == "image_size"
    with pytest.raises(FieldError, match="image_size and its old name input_size are both given"):
        TrainConfig(input_size=16, image_size=16)

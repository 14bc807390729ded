"""The shared run specification: fields checked when built, named as fields in the library and as options in the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from robench.cli.main import main
from robench.errors import FieldError
from robench.run.evaluate import EvalConfig
from robench.run.runspec import RunSpec
from robench.run.transfer import TransferConfig


@pytest.mark.parametrize(("fields", "message"), [
    ({"limit": 0}, "limit must be a positive number, got 0"),
    ({"seed": -1}, "seed must be a whole number in [0, 2**63 - 1], got -1"),
    ({"seed": 10**23}, "seed must be a whole number in [0, 2**63 - 1], got 100000000000000000000000"),
    ({"batch_size": 0}, "batch_size must be a whole number in [1, 1048576], got 0"),
    ({"workers": -2}, "workers must be a whole number in [0, 256], got -2"),
    ({"limit": 1.5}, "limit must be a whole number or None, got 1.5"),
    ({"limit": True}, "limit must be a whole number or None, got True"),
    ({"batch_size": "8"}, "batch_size must be a whole number, got '8'"),
    ({"seed": "x"}, "seed must be a whole number, got 'x'"),
    ({"device": 0}, "device must be text such as auto, cpu or cuda, got 0"),
    ({"suite": "attacks.yaml"}, "suite must be a Suite (robench.attacks.suite.load_suite), got 'attacks.yaml'"),
    ({"pretrained": "yes"}, "pretrained must be True or False, got 'yes'"),
    ({"threads": 0}, "threads must be a whole number in [1, 1024], got 0"),
    ({"threads": 2.0}, "threads must be a whole number or None, got 2.0"),
    ({"threads": 10**30}, f"threads must be a whole number in [1, 1024], got {10**30}"),  # exit 3 in torch
    ({"workers": 10**30}, f"workers must be a whole number in [0, 256], got {10**30}"),
    ({"batch_size": 2**20 + 1}, "batch_size must be a whole number in [1, 1048576], got 1048577"),
    ({"class_order": "alphabetical"}, "class_order must be one of natural, lexical, got 'alphabetical'"),
    ({"classes": 3}, "classes must be the path of a class-list file, or None, got 3"),
    ({"probe_samples": 0}, "probe_samples must be a whole number in [1, 1048576], got 0"),  # off is health_probes'
    ({"probe_samples": -1}, "probe_samples must be a whole number in [1, 1048576], got -1"),
    ({"probe_samples": 8.0}, "probe_samples must be a whole number, got 8.0"),
    ({"probe_samples": True}, "probe_samples must be a whole number, got True"),
    ({"target_class": "most_likely"}, "target_class must be one of random, least_likely, got 'most_likely'"),
    ({"target_class": "random"}, "target_class random: attack 'fgsm' has label 'true', not 'target'; every attack of "
                                 "a targeted run aims at the target class (robench.attacks.suite.aimed sets it)"),
])
def test_bad_fields_are_named_as_fields(fields: dict, message: str) -> None:
    with pytest.raises(FieldError) as err:
        RunSpec(**fields)
    assert str(err.value) == message and err.value.field == next(iter(fields))


def _click(option: str, problem: str) -> str:
    """Click's line for a value outside an option's range (the library's check stands behind it)."""
    return f"robench: error: Invalid value for '{option}': {problem}. (see 'main eval --help')"


@pytest.mark.parametrize(("args", "line"), [
    (["--limit", "0"], _click("--limit", "0 is not in the range x>=1")),
    (["--seed", "-1"], _click("--seed", "-1 is not in the range 0<=x<=9223372036854775807")),
    (["--seed", str(10**23)], _click("--seed", f"{10**23} is not in the range 0<=x<=9223372036854775807")),
    (["--device", "meta"], "robench: error: unknown device 'meta' for --device; use auto, cpu, cuda, cuda:N or mps"),
    (["--device", "cuda:x"], "robench: error: unknown device 'cuda:x' for --device; use auto, cpu, cuda, cuda:N or "
                             "mps"),
    (["--threads", str(10**30)], _click("--threads", f"{10**30} is not in the range 1<=x<=1024")),
    (["--workers", str(10**30)], _click("--workers", f"{10**30} is not in the range 0<=x<=256")),
    (["--batch-size", "99999999999"], _click("--batch-size", "99999999999 is not in the range 1<=x<=1048576")),
    (["--limit", "-3"], _click("--limit", "-3 is not in the range x>=1")),
    (["--probe-samples", "-1"], _click("--probe-samples", "-1 is not in the range 1<=x<=1048576")),
    (["--clean-ref-tol", "nan"], "robench: error: --clean-ref-tol must be a share in [0, 1], got nan"),
    pytest.param(["--device", "cuda:7"], "robench: error: --device 'cuda:7' asked for, but no CUDA GPU is available; "
                 "use --device cpu", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")),
])
def test_the_cli_names_the_option(args: list[str], line: str) -> None:
    result = CliRunner().invoke(main, ["eval", "zoo:effnet-base", "--attack", "fgsm", *args])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [line]


def test_a_targeted_run_and_its_suite_must_agree() -> None:
    """aimed() turns fgsm, bim and pgd toward the target; an attack that cannot aim, or aims with no target class, is
    refused by name."""
    from robench.attacks.suite import aimed, load_suite, override

    suite = aimed(override(load_suite(), ("fgsm", "bim", "pgd")), "least_likely")
    assert [a.config.label for a in suite.attacks] == ["target"] * 3
    assert RunSpec(suite=suite, target_class="random").describe()["target_class"] == "random"
    with pytest.raises(FieldError, match=r"^attack 'fgsm' has label 'target', but no target_class chooses its "
                                         r"classes; set target_class \(random or least_likely\)") as err:
        RunSpec(suite=suite)
    assert err.value.field == "target_class"
    with pytest.raises(FieldError, match=r"^target_class random: attack 'step_ll' cannot aim at a chosen class; "
                                         r"those that can: fgsm, bim, pgd, mi_fgsm, ni_fgsm, di_fgsm, ti_fgsm, "
                                         r"vmi_fgsm; pick them with attack$"):
        aimed(load_suite(), "random")  # the paper suite holds step_ll and iter_ll
    transfer = aimed(load_suite("transfer"), "random")  # every transfer attack aims, the combination too
    assert [(a.id, a.config.label) for a in transfer.attacks] == [(i, "target") for i in
                                                                  ("mi_fgsm", "di_fgsm", "ti_fgsm", "di-ti-mi")]


def test_configs_compose_the_run_and_record_it_flat() -> None:
    run = RunSpec(limit=7, seed=3)
    ev = EvalConfig(("zoo:effnet-base",), run).describe()
    tr = TransferConfig(("zoo:effnet-base",), ("effnet-base",), None, run).describe()
    shared = {k: v for k, v in run.describe().items()}
    assert {k: ev[k] for k in shared} == {k: tr[k] for k in shared} == shared
    assert (ev["limit"], ev["seed"], ev["models"], ev["resume"], ev["clean_refs"]) == (7, 3, ["zoo:effnet-base"], None,
                                                                                       [])
    assert (tr["sources"], tr["targets"], tr["cache"]) == (["effnet-base"], None, None)
    assert set(ev) - set(shared) == {"models", "resume", "clean_refs", "clean_ref_tol", "worst",
                                       "survivor_check"}
    assert set(tr) - set(shared) == {"models", "sources", "targets", "cache", "survivor_check", "ensembles",
                                     "ensemble_by"}


def test_numpy_integers_become_plain_ints() -> None:
    run = RunSpec(limit=np.int64(5), seed=np.int32(2))
    assert (run.limit, run.seed) == (5, 2) and type(run.limit) is int and type(run.seed) is int


def test_threads_none_leaves_torchs_thread_count_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The library sets the thread count only when asked: None is torch's own setting."""
    from robench.core.distributed import LOCAL
    from robench.run.runspec import open_run

    before = torch.get_num_threads()
    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    open_run(RunSpec(limit=2, threads=None), ("zoo:effnet-base",), LOCAL)
    assert calls == [] and torch.get_num_threads() == before
    open_run(RunSpec(limit=2, threads=1), ("zoo:effnet-base",), LOCAL)
    assert calls == [1]


@pytest.mark.parametrize("command", ["eval", "transfer-matrix", "leak-check", "train"])
@pytest.mark.parametrize("value", ["0", "x"])
def test_bad_threads_is_one_line_exit_2(command: str, value: str) -> None:
    extra = ["--out", "never.safetensors"] if command == "train" else []
    result = CliRunner().invoke(main, [command, "--threads", value, *extra])
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("robench: error: ") and "--threads" in lines[0], result.stderr


def test_without_data_a_checkpoint_evaluates_on_what_it_trained_on(tmp_path, default_checkpoint) -> None:
    """A Fashion-MNIST checkpoint ran on digits at 22% with no word: now the checkpoint's dataset is the default."""
    import json

    from click.testing import CliRunner
    from PIL import Image
    from safetensors.torch import load_file, save_file

    from robench.cli.main import main
    from robench.models.checkpoint import META_KEY, read_metadata

    folder = tmp_path / "digits-pngs"
    for c in range(10):
        (folder / str(c)).mkdir(parents=True)
        Image.new("L", (8, 8), 20 * c).save(folder / str(c) / "0.png")
    meta = {**read_metadata(default_checkpoint), "dataset": f"{folder}:train"}
    ckpt = tmp_path / "m.safetensors"
    save_file(load_file(str(default_checkpoint)), str(ckpt), metadata={META_KEY: json.dumps(meta, sort_keys=True)})
    args = ["eval", str(ckpt), "--attack", "fgsm", "--eps", "8", "-q", "--no-health"]
    result = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "a.json")])
    assert result.exit_code == 0, result.stderr
    doc = json.loads((tmp_path / "a.json").read_text())
    assert (doc["dataset"]["spec"], doc["dataset"]["n"], doc["config"]["data"]) == (str(folder), 10, str(folder))
    assert "was trained on" not in result.stderr
    assert f"evaluating on {folder} (its test split), the dataset the checkpoints of model 'm' record; --data " \
        "overrides" in result.stderr  # said: nothing else in the output named the data it chose
    result = CliRunner().invoke(main, [*args, "--data", "digits", "--limit", "20"])
    assert result.exit_code == 0 and (f"model 'm' was trained on {folder} (its checkpoint says) but the data is "
                                      "digits: its numbers are for data it never learned, unless the two hold the "
                                      f"same images (pass --data {folder})") in " ".join(result.stderr.split())
    other = tmp_path / "fm.safetensors"  # a checkpoint naming another built-in dataset (classes 0..9 kept)
    save_file(load_file(str(default_checkpoint)), str(other),
              metadata={META_KEY: json.dumps({**meta, "dataset": "fashion-mnist:train"}, sort_keys=True)})
    result = CliRunner().invoke(main, ["eval", str(other), "--data", "digits", "--attack", "fgsm", "--eps", "8",
                                       "--limit", "20", "-q", "--no-health"])
    assert result.exit_code == 0, result.stderr
    assert ("model 'fm' was trained on fashion-mnist (its checkpoint says) but the data is digits: its numbers are "
            "for data it never learned (pass --data fashion-mnist)") in result.stderr
    result = CliRunner().invoke(main, ["eval", "--attack", "fgsm", "--eps", "8", "--limit", "10", "-q", "--no-health"])
    assert result.exit_code == 0 and "was trained on" not in result.stderr  # the zoo: digits, as before
    both = CliRunner().invoke(main, ["eval", "-m", f"m={ckpt}", "-m", f"fm={other}", "--attack", "fgsm", "--eps", "8",
                                     "--limit", "10", "-q", "--no-health"])  # a folder and fashion-mnist: no agreement
    said = " ".join(both.stderr.split())
    assert both.exit_code == 0 and f"the checkpoints record different datasets ({folder}, fashion-mnist), so the " \
        "run takes the default, digits" in said and "model 'fm' was trained on fashion-mnist" in said
    gone = tmp_path / "gone.safetensors"  # its dataset cannot be opened here: the error says who chose it
    save_file(load_file(str(default_checkpoint)), str(gone),
              metadata={META_KEY: json.dumps({**meta, "dataset": f"{tmp_path / 'nowhere'}:train"}, sort_keys=True)})
    result = CliRunner().invoke(main, ["eval", str(gone), "--attack", "fgsm", "--eps", "8", "-q"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "dataset folder not found" in result.stderr and "(the models' checkpoints say they trained on" in \
        result.stderr and "pass --data to evaluate on other data)" in result.stderr

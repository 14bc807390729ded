"""The shared run specification: fields checked when built, named as fields in the library and as options in the CLI."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from robench.cli.main import main
from robench.errors import FieldError
from robench.evaluate import EvalConfig
from robench.runspec import RunSpec
from robench.transfer import TransferConfig


@pytest.mark.parametrize(("fields", "message"), [
    ({"limit": 0}, "limit must be a positive number, got 0"),
    ({"seed": -1}, "seed must be a whole number in [0, 2**63 - 1], got -1"),
    ({"seed": 10**23}, "seed must be a whole number in [0, 2**63 - 1], got 100000000000000000000000"),
    ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
    ({"workers": -2}, "workers must be >= 0, got -2"),
])
def test_bad_fields_are_named_as_fields(fields: dict, message: str) -> None:
    with pytest.raises(FieldError) as err:
        RunSpec(**fields)
    assert str(err.value) == message and err.value.field == next(iter(fields))


@pytest.mark.parametrize(("args", "line"), [
    (["--limit", "0"], "robench: error: --limit must be a positive number, got 0"),
    (["--seed", "-1"], "robench: error: --seed must be a whole number in [0, 2**63 - 1], got -1"),
    pytest.param(["--device", "cuda:7"], "robench: error: --device 'cuda:7' asked for, but no CUDA GPU is available; "
                 "use --device cpu", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")),
])
def test_the_cli_names_the_option(args: list[str], line: str) -> None:
    result = CliRunner().invoke(main, ["eval", "zoo:effnet-base", "--attack", "fgsm", *args])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [line]


def test_configs_compose_the_run_and_record_it_flat() -> None:
    run = RunSpec(limit=7, seed=3)
    ev = EvalConfig(("zoo:effnet-base",), run).describe()
    tr = TransferConfig(("zoo:effnet-base",), ("effnet-base",), None, run).describe()
    shared = {k: v for k, v in run.describe().items()}
    assert {k: ev[k] for k in shared} == {k: tr[k] for k in shared} == shared
    assert (ev["limit"], ev["seed"], ev["models"], ev["resume"], ev["clean_refs"]) == (7, 3, ["zoo:effnet-base"], None,
                                                                                       [])
    assert (tr["sources"], tr["targets"], tr["cache"]) == (["effnet-base"], None, None)
    assert set(ev) - set(shared) == {"models", "resume", "clean_refs", "clean_ref_tol"}
    assert set(tr) - set(shared) == {"models", "sources", "targets", "cache"}

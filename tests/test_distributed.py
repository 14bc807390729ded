"""torchrun support: sharding, launch checks, collectives on two gloo ranks, DDP training equal to one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from robench.cli.main import main
from robench.core.distributed import (
    LOCAL,
    Dist,
    all_sum,
    gather,
    session,
    setup,
    shard,
    sync_batchnorm,
    sync_buffers,
)
from robench.data import InputConfig, load_digits_source, open_source
from robench.errors import FieldError, RobenchError
from robench.models import load_model, parse_spec
from robench.models.checkpoint import read_metadata
from robench.models.recipe import TrainConfig
from robench.train.loop import accuracy, check_split, local_rows, short_tail, train, train_step

# A model with no BatchNorm and no dropout: nothing couples the examples of a batch, so two
# ranks must give one process's weights up to float noise (BatchNorm would need SyncBatchNorm,
# GPU-only in torch). See test_ddp_train_equals_one_process for how much noise.
EQUAL_CFG = TrainConfig(arch="test_efficientnet_gn", train_attack="pgd", steps=2, adv_fraction=0.3, epochs=1, lr=3e-4,
                        limit=100, batch_size=23, image_size=16)  # minibatches 23, 23, 23, 23, 8: uneven splits
STEP_CFG = TrainConfig(train_attack="pgd", steps=2, adv_fraction=0.3, lam=0.3)
STEP_SIZES = (23, 23, 9)  # global minibatches; adversarial parts 7, 7, 3
WORLD = 2


# --- shard ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "world"), [(10, 2), (11, 2), (7, 3), (8, 8), (1000, 7), (3, 1), (0, 1)])
def test_shard_covers_every_position_once(n: int, world: int) -> None:
    parts = [shard(n, Dist(rank=r, world_size=world)) for r in range(world)]
    together = torch.cat(parts)
    assert sorted(together.tolist()) == list(range(n))  # all positions, none twice, no padding
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    assert all(torch.equal(p, torch.arange(r, n, world)) for r, p in enumerate(parts))  # strided


def test_shard_spreads_a_prefix_evenly() -> None:
    """The adversarial part of a minibatch (positions below k) is crafted by every rank alike."""
    parts = [shard(64, Dist(rank=r, world_size=4)) for r in range(4)]
    assert [int((p < 32).sum()) for p in parts] == [8, 8, 8, 8]


def test_fewer_samples_than_processes() -> None:
    with pytest.raises(RobenchError, match="cannot split 3 samples over 4 processes"):
        shard(3, Dist(rank=0, world_size=4))
    assert shard(3, Dist(rank=3, world_size=4), allow_empty=True).tolist() == []
    assert shard(0, LOCAL).tolist() == [] and shard(5, LOCAL).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="negative"):
        shard(-1, LOCAL)


def test_local_rows_stream_each_ranks_part_of_every_minibatch() -> None:
    order = torch.randperm(53, generator=torch.Generator().manual_seed(0))
    for rank in range(3):
        rows, share = local_rows(order, 10, Dist(rank=rank, world_size=3))
        want = [b[rank::3] for b in order.split(10)]
        assert share == len(want[0]) and all(torch.equal(a, b) for a, b in zip(rows.split(share), want, strict=True))
    rows, share = local_rows(order, 10, LOCAL)
    assert torch.equal(rows, order) and share == 10


def test_every_rank_needs_examples_in_every_minibatch() -> None:
    four = Dist(rank=0, world_size=4)
    check_split(100, 20, four)
    check_split(104, 20, four)  # a last minibatch of 4, one example each: left out of every epoch
    check_split(102, 20, four)
    check_split(3, 2, LOCAL)
    assert [short_tail(n, 20, four) for n in (100, 104, 102, 108, 21)] == [0, 4, 2, 0, 1]
    assert [short_tail(n, 64) for n in (65, 64, 66, 1)] == [1, 0, 0, 1]
    with pytest.raises(RobenchError, match="3 training samples give some of the 4 processes fewer than 2"):
        check_split(3, 64, four)
    with pytest.raises(FieldError, match="^batch_size 3 gives some of the 4 processes fewer than 2 examples") as e:
        check_split(100, 3, four)  # the library names the field; the CLI says --batch-size
    assert e.value.named("--batch-size").startswith("--batch-size 3 gives")


@pytest.mark.parametrize("arch", ["test_efficientnet", "test_resnet"])
def test_sync_batchnorm_keeps_the_function(arch: str) -> None:
    """timm's norm + activation layers keep their activation (torch's own converter drops it)."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=10).eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(x)
        synced = sync_batchnorm(model)  # eval mode: SyncBatchNorm computes plain BatchNorm, even on the CPU
        assert any(isinstance(m, nn.SyncBatchNorm) for m in synced.modules())
        assert not any(type(m).__name__ == "BatchNormAct2d" for m in synced.modules())
        assert torch.allclose(synced(x), before, atol=1e-6)


# --- launch checks ------------------------------------------------------------------------------


TORCHRUN_ENV = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}


def test_single_process_without_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    with session("cpu") as d:
        assert (d.rank, d.world_size, d.device.type, d.backend, d.is_main, d.is_distributed) == \
            (0, 1, "cpu", None, True, False)
        assert gather(7, d) == [7] and all_sum([2], d) == [2.0]
    assert not torch.distributed.is_initialized()


@pytest.mark.parametrize(
    ("env", "kwargs", "needle"),
    [
        ({"RANK": None}, {}, "WORLD_SIZE=2 is set but RANK is not; start robench with torchrun"),
        ({"MASTER_ADDR": None}, {}, "MASTER_ADDR is not"),
        ({"WORLD_SIZE": "two"}, {}, "WORLD_SIZE='two' is not a whole number"),
        ({}, {"backend": "nccl", "device": "cpu"}, "backend nccl needs CUDA GPUs"),
        ({}, {"device": "tpu"}, "unknown device 'tpu'"),
    ],
)
def test_misconfigured_launch(monkeypatch: pytest.MonkeyPatch, env: dict, kwargs: dict, needle: str) -> None:
    for name, value in {**TORCHRUN_ENV, **env}.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    with pytest.raises(RobenchError, match=needle):
        setup(**kwargs)
    assert not torch.distributed.is_initialized()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_without_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in TORCHRUN_ENV.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(RobenchError, match="no CUDA GPU is available"):
        setup("cuda")


def test_cli_outside_torchrun_environment_exits_2(tmp_path: Path) -> None:
    env = {**TORCHRUN_ENV, "LOCAL_RANK": None}
    result = CliRunner().invoke(main, ["train", "--epochs", "1", "--limit", "8", "-q", "--out",
                                       str(tmp_path / "m.safetensors")], env=env)
    assert result.exit_code == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "LOCAL_RANK is not" in result.stderr
    assert not list(tmp_path.iterdir())


# --- two gloo ranks ------------------------------------------------------------------------------


def step_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.rand(n, 3, 8, 8, generator=gen), torch.randint(0, 10, (n,), generator=gen)) for n in STEP_SIZES]


def step_model() -> tuple[nn.Module, torch.optim.Optimizer]:
    """A conv net without BatchNorm, and plain SGD: any error in the gradient's scale shows in the weights."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                        nn.Flatten(), nn.Linear(16, 10))
    return net, torch.optim.SGD(net.parameters(), lr=0.5)


def run_steps(net: nn.Module, opt: torch.optim.Optimizer, d: Dist) -> list[float]:
    """train_step over STEP_SIZES global minibatches, each rank on its shard; the loss shares."""
    gen, losses = torch.Generator().manual_seed(0), []
    for x, y in step_batches():
        mine = shard(len(y), d)
        losses.append(train_step(net, opt, x[mine], y[mine], STEP_CFG, gen, d, len(y))[0])
    return losses


def bn_model(rank: int) -> nn.Module:
    """Equal weights on every rank, BatchNorm statistics that differ by rank."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                        nn.Flatten(), nn.Linear(32, 10))
    gen = torch.Generator().manual_seed(rank)
    net[1].running_mean.copy_(torch.randn(8, generator=gen))
    net[1].running_var.copy_(torch.rand(8, generator=gen) * 4)
    return net


def bn_accuracy(d: Dist) -> float:
    return accuracy(bn_model(d.rank), load_digits_source("test", limit=90), InputConfig(size=(8, 8)), 16, d)


def _collectives(d: Dist) -> dict:
    buffers = nn.BatchNorm1d(3)
    buffers.running_mean.fill_(d.rank + 1.0)
    sync_buffers(buffers, d)
    return {"gather": gather(d.rank * 10, d), "all_sum": all_sum([d.rank, 1.5], d),
            "buffer": buffers.running_mean.tolist(), "accuracy": bn_accuracy(d)}


def _worker(rank: int, port: int, tmp: str) -> None:
    """One of two ranks, set up as torchrun would: collectives, DDP train_steps, then train()."""
    os.environ.update(WORLD_SIZE=str(WORLD), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from robench.core.distributed import data_parallel

    with session("cpu") as d:
        report = {"dist": [d.rank, d.world_size, d.backend, str(d.device)], "collectives": _collectives(d)}
        net, opt = step_model()
        report["step_losses"] = run_steps(data_parallel(net, d), opt, d)
        torch.save(net.state_dict(), Path(tmp, f"step{rank}.pt"))
        result = train(EQUAL_CFG, Path(tmp, "ddp.safetensors"), dist=d)
        report["meta"], report["history"] = result.meta, result.history.to_dict("list")
    Path(tmp, f"rank{rank}.json").write_text(json.dumps(report))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """Two gloo ranks spawned once; each leaves a JSON report (rank 0 also the checkpoint)."""
    tmp = tmp_path_factory.mktemp("ddp")
    torch.multiprocessing.spawn(_worker, args=(_free_port(), str(tmp)), nprocs=WORLD, join=True)
    return tmp, [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(WORLD)]


@pytest.mark.slow
def test_collectives_on_two_ranks(two_ranks) -> None:
    _, reports = two_ranks
    assert [r["dist"] for r in reports] == [[0, 2, "gloo", "cpu"], [1, 2, "gloo", "cpu"]]
    first, second = (r["collectives"] for r in reports)
    assert first["gather"] == [0, 10] and second["gather"] is None
    assert first["all_sum"] == second["all_sum"] == [1.0, 3.0]
    assert first["buffer"] == second["buffer"] == [1.0, 1.0, 1.0]  # rank 0's running statistics
    assert first["accuracy"] == second["accuracy"] == bn_accuracy(LOCAL)  # rank 0's model scored on all samples
    assert bn_accuracy(LOCAL) != accuracy(bn_model(1), load_digits_source("test", limit=90), InputConfig(size=(8, 8)))


@pytest.mark.slow
def test_ddp_steps_equal_one_process(two_ranks) -> None:
    """Uneven shards, per-rank pgd crafting with shared draws, loss scaled for DDP's average: same SGD steps.

    With plain SGD a gradient of the wrong scale shows in full: measured, the weights end 1e-7 from one
    process's (of steps moving them 0.77 in norm); gradients summed instead of averaged end 0.2 away.
    """
    tmp, reports = two_ranks
    net, opt = step_model()
    losses = run_steps(net, opt, LOCAL)
    shares = np.array([r["step_losses"] for r in reports])
    assert shares.sum(0) == pytest.approx(losses, rel=1e-5)
    assert (shares > 0).all()  # each rank had its own examples
    for rank in range(WORLD):
        ddp = torch.load(Path(tmp, f"step{rank}.pt"))
        for name, value in net.state_dict().items():
            assert torch.allclose(ddp[name], value, atol=1e-5, rtol=0), (rank, name)


def off_by(weights: dict[str, torch.Tensor], reference: dict[str, torch.Tensor],
           start: dict[str, torch.Tensor]) -> tuple[float, float]:
    """How far ``weights`` are from ``reference``, in units of how far training moved ``reference`` from ``start``.

    Overall (norms over every entry) and in the worst tensor.
    """
    gap = {k: (weights[k] - reference[k]).double().flatten() for k in reference}
    moved = {k: (reference[k] - start[k]).double().flatten() for k in reference}
    overall = torch.cat(list(gap.values())).norm() / torch.cat(list(moved.values())).norm()
    worst = max(float(gap[k].norm() / moved[k].norm()) if gap[k].any() else 0.0 for k in reference)
    return float(overall), worst


@pytest.mark.slow
def test_ddp_train_equals_one_process(two_ranks, tmp_path: Path) -> None:
    """train() on two ranks: rank 0's checkpoint holds one process's weights up to float noise; ranks agree.

    Splitting a minibatch sums its gradient in another order, and AdamW's normalized steps grow that
    float noise to a fair share of lr wherever a gradient is near zero, so the weights are compared
    against how far training moved them, never bit for bit. Measured on a 2-core Xeon (lr 3e-4): DDP
    ends 9e-5 from one process at most, 4e-4 of the update overall and 2e-3 in the worst tensor
    (one process at 1 or 2 threads: 1e-6). A wrong DDP ends far off: ranks crafting with each other's
    draws 0.47 (0.77 worst tensor), both ranks on the same rows 0.86, each rank normalizing the loss
    by its own counts 0.06 (0.12). Gradients summed instead of averaged leave AdamW's steps as they
    were; test_ddp_steps_equal_one_process catches those with SGD.
    """
    import timm

    tmp, reports = two_ranks
    single = train(EQUAL_CFG, tmp_path / "one.safetensors")
    assert reports[0]["meta"] == reports[1]["meta"] == read_metadata(tmp / "ddp.safetensors")
    meta = reports[0]["meta"]
    assert (meta["world_size"], meta["backend"], meta["sync_batchnorm"]) == (2, "gloo", False)
    assert meta["recipe"] == single.meta["recipe"] and "world_size" not in single.meta
    assert meta["val_accuracy"] == pytest.approx(single.meta["val_accuracy"], abs=1.01 / 360)  # one test image
    assert meta["train_accuracy"] == pytest.approx(single.meta["train_accuracy"], abs=1.01 / 70)  # one clean example
    # the last epoch's mean loss, from weights that differ by the float noise above (summation order across
    # ranks, grown by AdamW): measured rel 4e-6 (Xeon), 1.5e-5 (EPYC, AVX-512), up to 5e-4 with other seeds;
    # a wrong DDP fails the weights' check below by far
    assert meta["loss"] == pytest.approx(single.meta["loss"], rel=1e-3)
    ddp = load_model(parse_spec(str(tmp / "ddp.safetensors")), 10).module.model.state_dict()
    one = load_model(parse_spec(str(tmp_path / "one.safetensors")), 10).module.model.state_dict()
    torch.manual_seed(EQUAL_CFG.seed)  # as train() does before creating the model
    start = timm.create_model(EQUAL_CFG.arch, num_classes=10).state_dict()
    assert ddp.keys() == one.keys() == start.keys()
    overall, worst = off_by(ddp, one, start)
    assert overall < 1e-2 and worst < 3e-2, (overall, worst)


# --- torchrun end to end -------------------------------------------------------------------------


@pytest.mark.slow
def test_torchrun_train_writes_one_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone", "-m", "robench",
           "train", "--arch", "test_resnet", "--epochs", "1", "--limit", "258", "--batch-size", "64",
           "--image-size", "16", "--out", str(out)]  # a last minibatch of 2: one example per rank, left out
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]
    assert proc.stderr.count(f"wrote {out}") == 1  # rank 0 alone reports
    assert proc.stderr.count("each epoch leaves 2 out") == 1
    meta = read_metadata(out)
    assert (meta["world_size"], meta["backend"], meta["epochs_done"]) == (2, "gloo", 1)
    recipe = meta["recipe"]
    assert (recipe["arch"], recipe["limit"], recipe["batch_size"], recipe["attack"]) == ("test_resnet", 258, 64,
                                                                                         "step_ll")
    model = load_model(parse_spec(str(out)), 10)
    assert model.input.size == (16, 16)
    # the ranks scored halves of the test set with rank 0's BatchNorm statistics: the saved model's accuracy
    assert meta["val_accuracy"] == accuracy(model.module, open_source("digits", "test"), model.input)


def _robench(args: list[str], procs: int | None, timeout: int = 300) -> subprocess.CompletedProcess:
    """``robench ARGS`` in one plain process (procs None) or under torchrun with ``procs`` gloo ranks."""
    launch = ["-m", "torch.distributed.run", "--nproc-per-node", str(procs), "--standalone"] if procs else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, *launch, "-m", "robench", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


# limit 32 in batches of 8: 4 batches in one process, 2 per rank in two, so even the count of attack calls agrees
# (64 in batches of 16, the slowest tests of this file: eval 71 s, transfer 49 s on 2 shared cores; now 45 s, 41 s)
SCALE_ARGS = ["zoo:effnet-base", "zoo:resnet-stepll", "--limit", "32", "--batch-size", "8", "--eps", "4,8", "-q"]


@pytest.mark.parametrize(("command", "extra"), [("eval", ["--attack", "fgsm", "--attack", "pgd", "--attack",
                                                          "iter_ll"]),
                                                 ("transfer-matrix", ["--attack", "fgsm", "--attack", "pgd"])])
@pytest.mark.slow
def test_torchrun_two_ranks_write_the_one_process_file(tmp_path: Path, command: str, extra: list[str]) -> None:
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    single = _robench([command, *SCALE_ARGS, *extra, "--out", str(one)], None)
    assert single.returncode == 0, single.stderr
    ranks = _robench([command, *SCALE_ARGS, *extra, "--out", str(two)], 2)
    assert ranks.returncode == 0, ranks.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.json", "two.json"]  # rank 0 alone writes
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert a["dataset"]["n"] == 32 and len(a["rows"]) > 4
    assert a == b  # every row, every per-sample outcome (eval), the provenance and the health section

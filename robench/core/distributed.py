"""torch.distributed for processes that torchrun starts: who am I, which samples are mine, combine results.

robench never starts processes itself: ``torchrun --nproc-per-node N -m robench CMD ...``
starts N copies and sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT;
``setup`` reads them and joins the process group (nccl on GPUs, gloo on the CPU).
Without torchrun (WORLD_SIZE unset or 1) every function here is a no-op over one
process, so capabilities call the same code either way.

Every collective below must be called by all ranks in the same order, as torch.distributed
requires; results come back in rank order.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from robench.core.devices import DEVICES
from robench.errors import FieldError, RobenchError

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    """This process among the others: its rank, how many there are, its device and backend."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # rank on this machine: the GPU it drives
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None  # nccl | gloo; None for a single process
    owns_group: bool = field(default=False, repr=False, compare=False)  # teardown destroys only its own group

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and renders progress."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """More than one process: collectives really communicate."""
        return self.world_size > 1


LOCAL = Dist()


def resolve_device(device: str, local_rank: int | None = None) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` | ``mps``, checked to exist here.

    Under torchrun (``local_rank`` given) GPUs are cuda:LOCAL_RANK. Raises FieldError (field ``device``).
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        asked = torch.device(device)
    except RuntimeError:
        raise FieldError("device", f"unknown device '{device}' for {{name}}; use {DEVICES}") from None
    if asked.type not in ("cpu", "cuda", "mps"):
        raise FieldError("device", f"{{name}} '{device}' cannot run models robench can score; use {DEVICES}")
    if asked.type == "mps" and not torch.backends.mps.is_available():
        raise FieldError("device", f"{{name}} '{device}' asked for, but MPS is not available here; use {{name}} cpu")
    if asked.type == "cuda" and not torch.cuda.is_available():
        raise FieldError("device", f"{{name}} '{device}' asked for, but no CUDA GPU is available; use {{name}} cpu")
    if asked.type == "cuda" and asked.index is not None and asked.index >= torch.cuda.device_count():
        raise FieldError("device", f"{{name}} '{device}' asked for, but this machine has {torch.cuda.device_count()} "
                         f"GPU(s); use {{name}} cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if asked.type != "cuda" or local_rank is None:
        return asked
    if asked.index is not None:
        raise FieldError("device", f"{{name}} {device}: under torchrun each process takes cuda:LOCAL_RANK; "
                         f"use {{name}} cuda")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise RobenchError(f"the process with LOCAL_RANK={local_rank} needs cuda:{local_rank}, but this machine has "
                           f"{count} GPU(s); start at most {count} processes per machine (torchrun --nproc-per-node)")
    return torch.device("cuda", local_rank)


def _launch_var(name: str) -> str:
    """A variable torchrun sets; missing means robench was not started by torchrun."""
    value = os.environ.get(name, "")
    if not value:
        raise RobenchError(f"WORLD_SIZE={os.environ.get('WORLD_SIZE')} is set but {name} is not; "
                           f"start robench with torchrun (torchrun --nproc-per-node N -m robench ...)")
    return value


def _env_int(name: str, default: int | None = None) -> int:
    if default is not None and name not in os.environ:
        return default
    raw = os.environ[name] if default is not None else _launch_var(name)
    try:
        return int(raw)
    except ValueError:
        raise RobenchError(f"environment variable {name}={raw!r} is not a whole number; "
                           f"start robench with torchrun, which sets it") from None


def _backend(device: torch.device, backend: str | None) -> str:
    """nccl for GPUs, gloo for the CPU, unless asked otherwise; an impossible choice is an error."""
    chosen = backend or ("nccl" if device.type == "cuda" else "gloo")
    if chosen == "nccl" and device.type != "cuda":
        raise FieldError("device", f"backend nccl needs CUDA GPUs, but this process runs on {device}; "
                                   f"use backend gloo or {{name}} cuda")
    if not torch.distributed.is_backend_available(chosen):
        raise RobenchError(f"torch.distributed backend {chosen} is not available in this PyTorch build")
    return chosen


def _adopt() -> Dist:
    """The process group someone else started (a library caller): used as is, never destroyed here."""
    group = torch.distributed
    local_rank = _env_int("LOCAL_RANK", 0)
    device = torch.device("cuda", torch.cuda.current_device()) if group.get_backend() == "nccl" else torch.device("cpu")
    return Dist(group.get_rank(), group.get_world_size(), local_rank, device, group.get_backend())


def setup(device: str = "auto", backend: str | None = None) -> Dist:
    """Join the process group torchrun described in the environment, or describe a single process.

    ``device`` is a --device value; under torchrun GPUs are cuda:LOCAL_RANK, one per process.
    ``backend`` defaults to nccl on GPUs and gloo on the CPU.
    """
    if not torch.distributed.is_available():
        if _env_int("WORLD_SIZE", 1) > 1:
            raise RobenchError("this PyTorch build has no torch.distributed; run one process (no torchrun)")
        return Dist(device=resolve_device(device))
    if torch.distributed.is_initialized():
        return _adopt()
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return Dist(device=resolve_device(device))
    rank, local_rank = _env_int("RANK"), _env_int("LOCAL_RANK")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        _launch_var(name)
    dev = resolve_device(device, local_rank)
    chosen = _backend(dev, backend)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    torch.distributed.init_process_group(chosen, rank=rank, world_size=world,
                                         device_id=dev if dev.type == "cuda" else None)
    return Dist(rank, world, local_rank, dev, chosen, owns_group=True)


def teardown(dist: Dist) -> None:
    """Leave the process group that ``setup`` joined (a no-op for one process or an adopted group)."""
    if dist.owns_group and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@contextmanager
def session(device: str = "auto", backend: str | None = None) -> Iterator[Dist]:
    """``setup`` on entry, ``teardown`` on exit, errors included.

    A run that ends normally waits for every rank before leaving the group: a rank that left
    while another still wrote its output made gloo abort the other ("terminate called without
    an active exception", exit -6), now and then.
    """
    dist = setup(device, backend)
    try:
        yield dist
        if dist.owns_group and torch.distributed.is_initialized():
            torch.distributed.barrier()
    finally:
        teardown(dist)


def shard(n: int, dist: Dist, *, allow_empty: bool = False) -> Tensor:
    """This rank's positions among 0..n-1: rank, rank + world_size, rank + 2 world_size, ...

    Every position goes to exactly one rank: no padding and no duplicates (DistributedSampler
    pads by repeating samples, which would count them twice in a metric), and shard sizes
    differ by at most one. Strided rather than contiguous blocks, so any prefix of the
    positions (the adversarial part of a training minibatch) is also spread evenly, and
    global position = rank + i * world_size for the i-th local one.
    Fewer positions than processes is an error unless ``allow_empty``: a rank with nothing
    to do usually means a misconfigured launch.
    """
    if n < 0:
        raise ValueError(f"cannot shard a negative count {n}")
    if dist.is_distributed and n < dist.world_size and not allow_empty:
        raise RobenchError(f"cannot split {n} samples over {dist.world_size} processes (some would get none); "
                           f"start at most {n} processes (torchrun --nproc-per-node) or use more samples")
    return torch.arange(dist.rank, n, dist.world_size)


def all_sum(values: Sequence[float], dist: Dist) -> list[float]:
    """Element-wise sums over all ranks (float64), on every rank: counts and loss totals."""
    if not dist.is_distributed:
        return [float(v) for v in values]
    total = torch.tensor(values, dtype=torch.float64, device=dist.device)
    torch.distributed.all_reduce(total)
    return total.tolist()


def gather(obj: T, dist: Dist) -> list[T] | None:
    """Every rank's ``obj`` (picklable), in rank order, on rank 0; None on the others."""
    if not dist.is_distributed:
        return [obj]
    out: list[Any] | None = [None] * dist.world_size if dist.is_main else None
    torch.distributed.gather_object(obj, out, dst=0)
    return out


def syncs_batchnorm(dist: Dist) -> bool:
    """Whether ``data_parallel`` makes BatchNorm use the statistics of the whole global batch.

    torch's SyncBatchNorm has GPU kernels only; on the CPU each rank normalizes with the
    statistics of its own shard, as plain DistributedDataParallel does.
    """
    return dist.is_distributed and dist.device.type == "cuda"


def data_parallel(model: nn.Module, dist: Dist) -> nn.Module:
    """``model`` (already on ``dist.device``) in DistributedDataParallel; itself for one process.

    BatchNorm becomes SyncBatchNorm where torch can (``syncs_batchnorm``), so a training
    forward normalizes with the global batch's statistics as one process would. Buffers
    are not broadcast at every forward (only at construction): callers call
    ``sync_buffers`` where ranks must agree, e.g. before crafting with the running statistics.
    Parameters stay the same objects, so an optimizer may be built before or after.
    """
    if not dist.is_distributed:
        return model
    if syncs_batchnorm(dist):
        model = sync_batchnorm(model)
    ids = [dist.device.index] if dist.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, **_no_forward_buffer_sync())


def _no_forward_buffer_sync() -> dict[str, Any]:  # Any: the keyword differs across torch versions
    """DDP's switch for broadcasting buffers at every forward: renamed in recent torch, the old name warns."""
    import inspect

    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers": False}


def sync_batchnorm(model: nn.Module) -> nn.Module:
    """``model`` with its BatchNorm layers made SyncBatchNorm, timm's norm + activation layers included.

    torch's own converter turns timm's BatchNormAct2d into a plain SyncBatchNorm, which
    silently drops the activation it carries; timm's converter keeps it.
    """
    from timm.layers import convert_sync_batchnorm

    return convert_sync_batchnorm(model)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel (forwards through it skip DDP's gradient bookkeeping)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def sync_buffers(model: nn.Module, dist: Dist) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank: one broadcast per dtype."""
    if not dist.is_distributed:
        return
    by_dtype: dict[torch.dtype, list[Tensor]] = defaultdict(list)
    for buffer in model.buffers():
        by_dtype[buffer.dtype].append(buffer)
    for buffers in by_dtype.values():
        flat = torch.cat([b.detach().reshape(-1) for b in buffers])
        torch.distributed.broadcast(flat, src=0)
        with torch.no_grad():
            for b, part in zip(buffers, flat.split([b.numel() for b in buffers]), strict=True):
                b.copy_(part.view_as(b))

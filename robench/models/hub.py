"""timm names and their pretrained (hub) weights: checking a name or tag, and fetching weights offline first.

Weights come from the local cache without touching the network; only if they are not cached is
the network tried, and then only when huggingface_hub is not told to stay offline and the
weights' host answers, so that a machine without network fails in seconds with a way out.
"""

from __future__ import annotations

import difflib
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from torch import nn

from robench.errors import RobenchError
from robench.models.spec import HUB_PREFIXES
from robench.models.weights import check_not_results


def check_arch(name: str) -> None:
    """Raise a RobenchError suggesting close names for an unknown timm model or tag."""
    import timm

    if name.startswith(HUB_PREFIXES):
        return
    arch, dot, _ = name.partition(".")
    if timm.is_model(arch):
        if dot and not _has_hub_weights(name):
            tags = ", ".join(timm.list_pretrained(f"{arch}.*")[:5]) or "none"
            raise RobenchError(f"unknown pretrained tag in '{name}'; known for {arch}: {tags}")
        return
    if name.endswith(".json") and Path(name).is_file():  # `robench eval baseline.json`: a results file?
        check_not_results(Path(name))
    close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "see `timm.list_models()` for names"
    raise RobenchError(f"unknown model '{name}'; {hint}")


def _has_hub_weights(name: str) -> bool:
    import timm

    if name.startswith(HUB_PREFIXES):
        return True
    return "." in name and name in timm.list_pretrained(name)


def _create(arch: str, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    import timm

    if not pretrained:
        return timm.create_model(arch, pretrained=False, **kwargs)
    with _hub_offline():  # cached weights first, without touching the network
        try:
            return timm.create_model(arch, pretrained=True, **kwargs)
        except Exception:  # noqa: BLE001, S110 - not cached: try the network below
            pass
    if _offline():
        raise RobenchError(
            f"cannot load pretrained weights for '{arch}': not cached and HF_HUB_OFFLINE is set; "
            f"give local weights instead: {arch.split('.')[0]}@/path/to/weights.safetensors"
        )
    host = _weights_host(arch)
    if host and not _reachable(host):
        raise RobenchError(
            f"cannot load pretrained weights for '{arch}': not cached and {host} is unreachable; "
            f"give local weights instead: {arch.split('.')[0]}@/path/to/weights.safetensors"
        )
    try:
        return timm.create_model(arch, pretrained=True, **kwargs)
    except Exception as e:  # noqa: BLE001 - hub and network errors come in many types
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise RobenchError(
            f"cannot load pretrained weights for '{arch}' ({reason}); without network, "
            f"give local weights instead: {arch.split('.')[0]}@/path/to/weights.safetensors"
        ) from None


def _offline() -> bool:
    """Has the user asked huggingface_hub to stay offline? Then robench does not probe the network either."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
    return flag or bool(constants.HF_HUB_OFFLINE)


@contextmanager
def _hub_offline() -> Iterator[None]:
    """Make huggingface_hub use its cache only (it reads this flag at call time)."""
    from huggingface_hub import constants

    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


def _weights_host(arch: str) -> str | None:
    """The host timm would download ``arch``'s weights from, if it can tell."""
    from huggingface_hub import constants
    from timm.models import get_pretrained_cfg

    cfg = None if arch.startswith(HUB_PREFIXES) else get_pretrained_cfg(arch)
    if cfg is None or cfg.hf_hub_id:
        return urlparse(constants.ENDPOINT).hostname
    url = cfg.url[0] if isinstance(cfg.url, tuple) else cfg.url  # timm also allows (url, file name)
    return urlparse(url).hostname if url else None


def _reachable(host: str, timeout: float = 3.0) -> bool:
    """Can we open a TCP connection to ``host``:443? Behind a proxy, assume yes."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True

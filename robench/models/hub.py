"""timm names and their pretrained (hub) weights: checking a name or tag, and fetching weights offline first.

Weights come from the local cache without touching the network; only if they are not cached is
the network tried, and then only when huggingface_hub is not told to stay offline and the
weights' host answers, so that a machine without network fails in seconds with a way out.
"""

from __future__ import annotations

import difflib
import os
import socket
import threading
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
    address = _weights_host(arch)
    if address and not _reachable(*address):
        raise RobenchError(
            f"cannot load pretrained weights for '{arch}': not cached and {_where(address)} is unreachable "
            f"(no answer within {PROBE_TIMEOUT:g} s); give local weights instead: "
            f"{arch.split('.')[0]}@/path/to/weights.safetensors, or copy a Hugging Face cache holding them "
            f"(HF_HOME) and set HF_HUB_OFFLINE=1"
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


def _weights_host(arch: str) -> tuple[str, int] | None:
    """The host and port timm would download ``arch``'s weights from (the hub's at HF_ENDPOINT), if it can tell."""
    from huggingface_hub import constants
    from timm.models import get_pretrained_cfg

    cfg = None if arch.startswith(HUB_PREFIXES) else get_pretrained_cfg(arch)
    if cfg is None or cfg.hf_hub_id:
        return _address(constants.ENDPOINT)
    url = cfg.url[0] if isinstance(cfg.url, tuple) else cfg.url  # timm also allows (url, file name)
    return _address(url) if url else None


def _address(url: str) -> tuple[str, int] | None:
    """A URL's host and port, the scheme's default port if it names none."""
    parts = urlparse(url)
    if not parts.hostname:
        return None
    return parts.hostname, parts.port or (80 if parts.scheme == "http" else 443)


def _where(address: tuple[str, int]) -> str:
    host, port = address
    return host if port == 443 else f"{host}:{port}"


PROBE_TIMEOUT = 5.0  # seconds, for the name lookup and the connection together


def _reachable(host: str, port: int = 443, timeout: float | None = None) -> bool:
    """Does ``host``:``port`` (or the HTTPS proxy, if one is set) accept a TCP connection within ``timeout``?

    The probe runs in a thread so that the name lookup, which a socket timeout does not bound,
    is bounded too: without network a lookup can take minutes, and the hub's own retries longer.
    """
    proxy = next((os.environ[k] for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
                  if os.environ.get(k)), None)
    if proxy:
        address = _address(proxy if "://" in proxy else f"http://{proxy}")
        if address is None:
            return True  # a proxy setting we cannot read: let the hub client try it
        host, port = address
    answered: list[bool] = []
    timeout = PROBE_TIMEOUT if timeout is None else timeout

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            answered.append(True)
        except OSError:
            pass

    probe = threading.Thread(target=connect, name="robench-hub-probe", daemon=True)
    probe.start()
    probe.join(timeout)
    return bool(answered)

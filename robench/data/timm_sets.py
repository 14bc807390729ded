"""timm dataset strings (``torch/...``, ``hfds/...``): datasets timm's create_dataset opens, and may download."""

from __future__ import annotations

from typing import Any

from robench.data.images import ImageSource, _native
from robench.data.inputs import select
from robench.errors import RobenchError

TIMM_PREFIXES = ("torch", "hfds", "hfids", "tfds", "wds")  # data specs passed to timm's create_dataset
BACK_ENDS = {  # prefix -> (module, pip package): timm imports them only when asked, and then prints its own advice
    "torch": ("torchvision", "torchvision"), "hfds": ("datasets", "datasets"), "hfids": ("datasets", "datasets"),
    "tfds": ("tensorflow_datasets", "tensorflow-datasets"), "wds": ("webdataset", "webdataset"),
}


def check_back_end(name: str) -> None:
    """Refuse a timm dataset string whose back end is not installed, in one line saying what to install."""
    import importlib.util

    module, package = BACK_ENDS.get(name.partition("/")[0], (None, None))
    if module is not None and importlib.util.find_spec(module) is None:
        raise RobenchError(f"dataset {name} needs the {package} package, which is not installed: "
                           f"pip install {package}")


def load_timm_source(name: str, split: str, limit: int | None, seed: int, workers: int = 0,
                     skip_bad: bool = False) -> ImageSource:
    """A timm dataset string (``torch/cifar10``, ``hfds/...``); these may download."""
    from timm.data import create_dataset

    from robench.core.cache import cache_dir

    check_back_end(name)
    try:
        ds = create_dataset(name, root=str(cache_dir() / "datasets"), split=split, download=True)
    except Exception as e:  # noqa: BLE001 - timm and its back ends raise many kinds
        raise RobenchError(f"cannot open dataset {name} (split {split}): {str(e).splitlines()[0]}") from None
    classes = _class_names(ds)
    if not classes:
        raise RobenchError(f"dataset {name} does not say how many classes it has; use an image folder instead")
    index = select(len(ds), limit, seed, name)
    get = lambda i: (*ds[i][:2], None)  # noqa: E731 - no file to hash: the decoded pixels are
    return ImageSource(
        name=name, get=get, index=index, ids=[f"{name}:{split}:{i}" for i in index],
        num_classes=len(classes), classes=classes, describe_row=lambda i: f"{name}[{i}]", workers=workers,
        skip_bad=skip_bad, native=_native(get, index),
    )


def _class_names(ds: Any) -> list[str]:
    """A timm or torchvision dataset's class names in index order (its ``classes``, or its reader's class_to_idx)."""
    classes = getattr(ds, "classes", None) or getattr(getattr(ds, "reader", None), "class_to_idx", None)
    if isinstance(classes, dict):
        return [str(c) for c in sorted(classes, key=classes.__getitem__)]
    return [str(c) for c in classes] if classes else []

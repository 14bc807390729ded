"""The model-spec grammar: the text naming a model becomes a ``ModelSpec`` (label, name, checkpoint, overrides).

A spec is ``[LABEL=]MODEL[@CHECKPOINT][?KEY=VALUE&...]``, where MODEL is a timm name, a
robench checkpoint (``CHECKPOINT.safetensors`` carries its own architecture and
preprocessing), ``zoo:NAME``, or a factory (``FILE.py:CALLABLE``, ``package.module:CALLABLE``:
any PyTorch classifier, see ``robench.models.factories``). The query sets the model's preprocessing
(``robench.models.preprocess``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from robench.errors import FieldError, RobenchError
from robench.models import factories, zoo
from robench.models.preprocess import Preprocess, split_query

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pth.tar", ".pt", ".bin")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec; ``name`` is None when the checkpoint names the architecture."""

    text: str
    label: str
    name: str | None  # a timm name or a factory (FILE.py:CALLABLE, package.module:CALLABLE)
    checkpoint: Path | None
    preprocess: Preprocess = field(default_factory=Preprocess)  # the spec's own ?key=value overrides

    @property
    def is_factory(self) -> bool:
        """Is the model built by the user's code (``robench.models.factories``)?"""
        return self.name is not None and factories.is_factory(self.name)


HUB_PREFIXES = ("hf-hub:", "hf_hub:")


def looks_like_path(text: str) -> bool:
    """A checkpoint suffix or a slash (``./NAME`` included) makes a text a path; anything else is a name.

    The rule is written, not guessed from the filesystem: ``resnet18`` stays a timm name even
    when a file of that name lies in the working folder (``./resnet18`` names the file).
    """
    if text.startswith(HUB_PREFIXES):
        return False
    return text.endswith(CHECKPOINT_SUFFIXES) or "/" in text


def parse_spec(text: str) -> ModelSpec:
    """Split ``[LABEL=]MODEL[@CHECKPOINT][?KEY=VALUE&...]``; the label defaults to MODEL, callable or file stem.

    A ``=`` or ``@`` belongs to a path when what comes before it looks like one
    (``runs/lr=0.1/m.safetensors``, ``./v1@2.safetensors``).
    """
    unprintable = next((c for c in text if not c.isprintable()), None)
    if unprintable is not None:  # a label reaches terminals, logs, Markdown and XML: no escape sequences
        raise FieldError("models", f"model spec {text!r} holds the control character {unprintable!r}; "
                                   f"write the label and path in printable characters")
    body, preprocess = split_query(text)
    label, eq, rest = body.partition("=")
    if not eq or "@" in label or looks_like_path(label):
        label, rest = "", body
    if rest.startswith("zoo:"):
        entry = zoo.get(rest[4:])
        return ModelSpec(text, label or entry.name, None, entry.path, preprocess)
    name, at, ckpt = rest.partition("@")
    if at and looks_like_path(name) and not factories.is_factory(name):
        name, at, ckpt = rest, "", ""
    if not rest or (at and not (name and ckpt)):
        raise RobenchError(f"bad model spec '{text}'; use [LABEL=]NAME[@CHECKPOINT], e.g. resnet18@weights.pth, "
                           f"or FILE.py:CALLABLE[@CHECKPOINT]")
    checkpoint = Path(ckpt) if at else None
    if ":" in name and not name.startswith(HUB_PREFIXES) and not factories.is_factory(name):
        raise RobenchError(f"bad model spec '{text}': a factory is FILE.py:CALLABLE or package.module:CALLABLE, "
                           f"e.g. examples/lenet.py:LeNet")
    if factories.is_factory(name):
        return ModelSpec(text, label or name.rpartition(":")[2], name, checkpoint, preprocess)
    if not at and looks_like_path(name):
        path = Path(name)
        return ModelSpec(text, label or path.name.split(".")[0], None, path, preprocess)
    return ModelSpec(text, label or name, name, checkpoint, preprocess)

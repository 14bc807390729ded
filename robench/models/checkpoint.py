"""Self-describing checkpoints: safetensors weights plus robench metadata.

The metadata (arch, num_classes, input size, mean/std, ...) lets
``robench eval path.safetensors`` rebuild the model with nothing else. How a model wants
its pixels is recorded under timm's data-config keys, written and read here only. A file
robench did not write itself may carry anything there, so the metadata is validated on
read against ``CheckpointMeta`` (pydantic): a bad field is one line naming the file and the
field, never a crash further on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from torch import nn

from robench.core.files import atomic_write
from robench.core.omittable import Omittable
from robench.core.schema_errors import schema_error
from robench.data import InputConfig
from robench.errors import RobenchError
from robench.models.preprocess import MAX_SIDE, Interpolation

META_KEY = "robench"
INPUT_KEYS = ("input_size", "interpolation", "crop_pct", "mean", "std", "crop_mode")  # timm data-config keys
DEFAULT_CROP_MODE = "center"  # what checkpoints that do not record crop_mode were made with
# timm.create_model keywords a checkpoint's model_kwargs may set: the architecture's shape and
# regularization only. Anything else is refused: checkpoint_path, pretrained*, cache_dir and
# pretrained_cfg(_overlay) would make timm open (and unpickle) or download other files.
MODEL_KWARGS = ("num_classes", "in_chans", "img_size", "global_pool", "drop_rate", "drop_path_rate",
                "drop_block_rate", "attn_drop_rate", "proj_drop_rate", "pos_drop_rate", "output_stride")


Share = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0, le=2**53)]


class CheckpointMeta(BaseModel):
    """robench checkpoint metadata: the fields robench reads, with their types and ranges.

    Fields robench does not read (the recipe's details, the loss, ...) may hold anything;
    ``model_kwargs`` is further limited to MODEL_KWARGS by ``model_kwargs``. A field robench
    reads may be absent but never null (readers take null for a value), so each is Omittable,
    never Optional: the None defaults stand for absence and are never validated.
    """

    model_config = ConfigDict(extra="allow", strict=True)

    arch: Omittable[str] = Field(None, min_length=1, max_length=500)
    num_classes: Omittable[int] = Field(None, ge=1, le=1_000_000)
    classes: Omittable[list[str]] = Field(None, min_length=1, max_length=1_000_000)
    input_size: Omittable[list[Annotated[int, Field(ge=1, le=MAX_SIDE)]]] = Field(None, min_length=3, max_length=3)
    interpolation: Omittable[Interpolation] = None
    crop_pct: Omittable[float] = Field(None, gt=0, le=1, allow_inf_nan=False)
    crop_mode: Omittable[Literal["center", "squash", "border"]] = None
    mean: Omittable[list[Annotated[float, Field(allow_inf_nan=False)]]] = Field(None, min_length=1, max_length=3)
    std: Omittable[list[Annotated[float, Field(gt=0, allow_inf_nan=False)]]] = Field(None, min_length=1, max_length=3)
    dataset: Omittable[str] = Field(None, min_length=1, max_length=5000)
    model_kwargs: Omittable[dict[str, Any]] = None
    seed: Omittable[Count] = None
    robench_version: Omittable[str] = None
    train_accuracy: Omittable[Share] = None  # on the clean examples of the last epoch
    train_adv_accuracy: Omittable[Share] = None  # on its adversarial examples, as crafted (before each update)
    val_accuracy: Omittable[Share] = None
    recipe: Omittable[dict[str, Any]] = None

    @field_validator("classes")
    @classmethod
    def _one_name_per_class(cls, classes: list[str] | None, info: ValidationInfo) -> list[str] | None:
        wanted = info.data.get("num_classes")
        if classes is not None and wanted is not None and len(classes) != wanted:
            raise ValueError(f"expected {wanted} class names, as num_classes says")
        return classes

    @field_validator("input_size")
    @classmethod
    def _channels(cls, size: list[int] | None) -> list[int] | None:
        if size is not None and size[0] not in (1, 3):
            raise ValueError("expected [C, H, W] with C 1 or 3")
        return size

    @field_validator("std")
    @classmethod
    def _one_std_per_mean(cls, std: list[float] | None, info: ValidationInfo) -> list[float] | None:
        mean = info.data.get("mean")
        if std is not None and mean is not None and len(std) != len(mean):
            raise ValueError(f"expected {len(mean)} values, one per mean value")
        return std


def save_checkpoint(path: Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """Write weights and metadata atomically (a crash never leaves half a file)."""
    from safetensors.torch import save_model

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_model(model, str(tmp), metadata={META_KEY: json.dumps(meta, sort_keys=True)}))


def read_metadata(path: Path) -> dict[str, Any] | None:
    """robench metadata of a .safetensors file, or None if it has none."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise RobenchError(f"cannot read checkpoint {path}: {e}; is it a complete .safetensors file?") from None
    if META_KEY not in meta:
        return None
    try:
        found = json.loads(meta[META_KEY])
    except json.JSONDecodeError:
        raise RobenchError(f"checkpoint {path} has unreadable robench metadata") from None
    if not isinstance(found, dict):
        raise RobenchError(f"checkpoint {path}: its robench metadata is a JSON {type(found).__name__}, not an object; "
                           f"is it a robench checkpoint?")
    try:
        CheckpointMeta.model_validate(found)
    except ValidationError as e:
        raise schema_error(f"checkpoint {path}: robench metadata", e,
                           "fix that field, or give the weights as NAME@FILE without robench metadata") from None
    return found


def model_kwargs(meta: dict[str, Any], path: Path) -> dict[str, Any]:
    """The timm.create_model keywords a checkpoint's metadata records, refused unless each is in MODEL_KWARGS.

    They reach timm as they are, so a file could otherwise name a second file for timm to open.
    """
    kwargs = meta.get("model_kwargs", {})
    if not isinstance(kwargs, dict):
        raise RobenchError(f"checkpoint {path}: model_kwargs in its metadata is a {type(kwargs).__name__}, not an "
                           f"object of timm.create_model keywords; remove it or write it as {{\"drop_rate\": 0.1}}")
    refused = sorted(str(k) for k in kwargs if k not in MODEL_KWARGS)
    if refused:
        raise RobenchError(f"checkpoint {path}: model_kwargs in its metadata sets {', '.join(refused)}, which robench "
                           f"refuses (only {', '.join(MODEL_KWARGS)} may be set); remove "
                           f"{'it' if len(refused) == 1 else 'them'} from the metadata")
    bad = next((k for k, v in kwargs.items() if not _plain(v)), None)
    if bad is not None:
        raise RobenchError(f"checkpoint {path}: model_kwargs.{bad} in its metadata is not a number, string or list "
                           f"of numbers; fix or remove it")
    return dict(kwargs)


def _plain(value: Any) -> bool:
    """A number, string, bool, null, or a short list of numbers: all an architecture keyword takes."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    return isinstance(value, list) and len(value) <= 4 and all(isinstance(v, (int, float)) for v in value)


def input_metadata(input_cfg: InputConfig, mean: Sequence[float], std: Sequence[float]) -> dict[str, Any]:
    """How a model wants its pixels, as metadata (timm data-config keys, in result files too).

    crop_mode is left out at its default, so files keep the bytes they had before it was
    recorded: the zoo's rebuilds still match the shipped files.
    """
    meta = {"input_size": [input_cfg.channels, *input_cfg.size], "interpolation": input_cfg.interpolation,
            "crop_pct": input_cfg.crop_pct, "mean": list(mean), "std": list(std), "crop_mode": input_cfg.crop_mode}
    if input_cfg.crop_mode == DEFAULT_CROP_MODE:
        del meta["crop_mode"]
    return meta


def data_config(meta: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """A checkpointed model's timm data config: what its metadata records, over the architecture's ``defaults``.

    Plain weights (no metadata) take the architecture's config whole; robench metadata
    without crop_mode means the default center crop, never the architecture's own mode.
    """
    recorded = {k: meta[k] for k in INPUT_KEYS if k in meta}
    if meta and "crop_mode" not in meta:
        recorded["crop_mode"] = DEFAULT_CROP_MODE
    return {**defaults, **recorded}

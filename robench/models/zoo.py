"""The built-in zoo: tiny timm models trained by robench itself, shipped in the package.

Every command has real subjects offline: baselines and adversarially trained models of
two architectures on digits, and on Fashion-MNIST a model that leaks labels beside its two
controls (these three need the Debian package dataset-fashion-mnist to evaluate). This module
is the list (names, files, recipes as plain data), which every ``zoo:NAME`` spec reads;
``python -m robench.train.zoo_build`` retrains them.
"""

from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from robench.errors import RobenchError
from robench.models.recipe import TrainConfig

ZOO_DIR = Path(__file__).with_name("zoo_weights")
EPOCHS = 20


@dataclass(frozen=True)
class ZooEntry:
    """A zoo model: its name, its training recipe and a one-line description."""

    name: str
    config: TrainConfig
    summary: str

    @property
    def path(self) -> Path:
        return ZOO_DIR / f"{self.name}.safetensors"


def _entry(name: str, arch: str, attack: str, summary: str, label: str = "true") -> ZooEntry:
    return ZooEntry(name, TrainConfig(arch=arch, train_attack=attack, label=label, epochs=EPOCHS), summary)


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        _entry("effnet-base", "test_efficientnet", "none", "plain training (baseline)"),
        _entry("effnet-stepll", "test_efficientnet", "step_ll", "adversarially trained with step l.l. (the paper)"),
        _entry("effnet-fgsm-true", "test_efficientnet", "fgsm", "adversarially trained with FGSM, true labels"),
        _entry("effnet-fgsm-pred", "test_efficientnet", "fgsm", "adversarially trained with FGSM, predicted labels",
               label="predicted"),
        _entry("resnet-base", "test_resnet", "none", "plain training (baseline)"),
        _entry("resnet-stepll", "test_resnet", "step_ll", "adversarially trained with step l.l. (the paper)"),
    )
}
# Label leaking (Kurakin et al. 2017, sec. 4.1) in the setting Madry et al. (2018, sec. 4) report it: FGSM on true
# labels at a fixed 0.3 px (76.5/255), no random start, half of each minibatch adversarial with lambda 1, on the
# 60,000 Fashion-MNIST training images at 28 px (docs/leak.md); the controls craft with predicted labels and step l.l.
LEAK_RECIPE = TrainConfig(arch="test_resnet", data="fashion-mnist", image_size=28, epochs=5, train_attack="fgsm",
                          label="true", adv_fraction=0.5, lam=1.0, eps_max=76.5, eps_dist="fixed")
ZOO.update({
    "fm-resnet-fgsm-true": ZooEntry("fm-resnet-fgsm-true", LEAK_RECIPE,
                                    "FGSM, true labels, fixed 0.3 px: leaks labels"),
    "fm-resnet-fgsm-pred": ZooEntry("fm-resnet-fgsm-pred", replace(LEAK_RECIPE, label="predicted"),
                                    "FGSM, predicted labels, fixed 0.3 px (the control)"),
    "fm-resnet-stepll": ZooEntry("fm-resnet-stepll", replace(LEAK_RECIPE, train_attack="step_ll"),
                                 "step l.l., fixed 0.3 px (the paper's cure)"),
})
DEFAULT = ("effnet-base", "effnet-stepll")  # what `robench eval` evaluates with no model given


def get(name: str) -> ZooEntry:
    """A zoo entry by name; an unknown name suggests the closest ones, else lists them all."""
    if name not in ZOO:
        close = difflib.get_close_matches(name, ZOO, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(ZOO)}"
        raise RobenchError(f"unknown zoo model '{name}'; {hint} (see `robench zoo list`)")
    entry = ZOO[name]
    if not entry.path.is_file():
        raise RobenchError(f"zoo model '{name}' is missing from {ZOO_DIR}; "
                           f"run: python -m robench.train.zoo_build {name}")
    return entry


if __name__ == "__main__":
    sys.exit("robench.models.zoo builds nothing itself; run: python -m robench.train.zoo_build [NAME ...]")

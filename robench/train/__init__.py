"""Adversarial training with the paper's recipe (Kurakin et al. 2017, section 3), and rebuilding the zoo."""

from robench.models.recipe import TrainConfig
from robench.train.loop import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]

"""The evaluation engine: sources craft, targets score, one pass over the data for every command.

A run is a ``Plan``: models, and for each source the targets that score its examples. A
white-box sweep (``robench eval``) is the case where every model is its own only target;
a transfer matrix is the general case. Per batch each model's clean forward runs once
(under inference_mode); then each source crafts its examples for every attack (once, for
all its eps) and every target scores each example once. Only per-sample outcomes are
kept (a few bytes per sample per setting), so memory is O(batch). Out-of-memory batches
are halved and retried, finished batches go to the resume state, and under torchrun each
rank runs its shard and rank 0 gathers: all written once, here.

Modules, each importing only those above it in this list:

- ``passes``: counting a model's forward and backward passes, the cost measure of an attack.
- ``resume``: the resume state, finished batches appended to a folder.
- ``outcomes``: ``Outcomes`` and ``Matrix``, what a run keeps; ``correct``, ``NONFINITE``, ``settings_of``.
- ``plan``: ``Participant``, ``Plan`` and the ``ExampleStore`` protocol (who crafts, who scores).
- ``hooks``: ``Hooks`` and ``Tracker``, what a run reports to and keeps in beyond its outcomes.
- ``batch``: one batch (``_Batch``, and ``Survivors`` under cascade or early stopping); ``score``,
  ``attack_noise``, ``goal_noise``.
- ``runner``: ``run`` and ``run_batches`` (out-of-memory retries, resume, gathering the ranks), and
  ``evaluate``, the one-model sweep.

This package re-exports the names other packages use; modules inside it import each other by module path.
"""

from robench.engine.batch import attack_noise, goal_noise, score
from robench.engine.hooks import Hooks, Progress, Status, Warn
from robench.engine.outcomes import NONFINITE, Matrix, Outcomes, correct, predictions, settings_of
from robench.engine.plan import Examples, ExampleStore, Participant, Plan, sample_key
from robench.engine.runner import evaluate, is_out_of_memory, run, run_batches, run_views_fitting

__all__ = [
    "NONFINITE", "ExampleStore", "Examples", "Hooks", "Matrix", "Outcomes", "Participant", "Plan", "Progress",
    "Status", "Warn", "attack_noise", "correct", "evaluate", "goal_noise", "is_out_of_memory", "predictions", "run",
    "run_batches", "run_views_fitting", "sample_key", "score", "settings_of",
]

"""Benchmark: robench's AutoAttack suites against torchattacks' and ART's AutoAttack (issue 28's evidence).

The same model, images and thread for every side; the sides alternate order over rounds
(forward, then reversed, ...). Sides:

  a. robench ``autoattack`` (its worst row): APGD-CE, APGD-T (9 targets), FAB-T, Square 5,000;
  b. robench ``autoattack-malt``, the cheaper suite (3 MALT targets, Square 1,500, no FAB-T);
  c. torchattacks ``AutoAttack(version="standard")`` given the standard run's 100 steps
     (torchattacks builds it with 10, its attacks' default);
  d. ART's AutoAttack machinery on the attacks it shares with the standard run (APGD-CE,
     targeted APGD-DLR against every other class, Square 5,000; ART has no FAB), in the standard
     run's order, when adversarial-robustness-toolbox is importable;
  e. robench on (d)'s attack list (``autoattack`` without FAB-T), so (e)/(d) is like for like.

Printed per model and eps: clean and robust accuracy of each side, the median CPU seconds of
this process (time.process_time) over the rounds, the ratios a/c and b/c (goal: a/c <= 0.8),
e/d (goal <= 0.8), forward and backward passes per sample (a forward hook on the model), and
per-sample agreement: samples one side fools that the cheaper suite does not ("never weaker":
must be 0) and the reverse. ``--markdown PATH`` writes the same table as Markdown.

Models (``--models``, comma-separated): zoo specs (``zoo:resnet-stepll``, ... on digits test
images at ``--eps``), ``lenet-plain`` and ``lenet-pgd`` (advertorch's MNIST LeNet5 weights,
plainly and PGD-trained, from ``--lenet-dir``, on ``--mnist`` at ``--lenet-eps``, 0.3 in
pixels), and ``timm-random`` (a timm resnet18 at 224 px with seeded random weights on random
images, labelled with its own predictions so that every sample is attacked: timing only).

    python bench/autoattack.py                       # zoo:resnet-base, eps 8, 40 images, 1 round
    python bench/autoattack.py --models zoo:effnet-base,zoo:effnet-stepll,zoo:resnet-base,zoo:resnet-stepll,\\
lenet-plain,lenet-pgd,timm-random --eps 8,16 --limit 100 --robust-limit 20 --rounds 3 --markdown table.md
    python bench/autoattack.py --table               # also PGD-10, APGD-CE and torchattacks' 10 steps
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # numpy (ART) on one thread too
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import importlib.util  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from robench.analysis import worst  # noqa: E402
from robench.attacks.suite import Suite, load_suite, parse_suite  # noqa: E402
from robench.data import Batch, InputConfig, open_source  # noqa: E402
from robench.engine import Hooks, Matrix, Participant, Plan, run_batches, settings_of  # noqa: E402
from robench.engine.passes import count_passes  # noqa: E402
from robench.models import load_model, parse_spec  # noqa: E402

PGD10 = "eps: [8]\nattacks:\n  - {name: pgd, id: pgd-10, steps: 10}\n"
APGD_CE = "eps: [8]\nattacks:\n  - {name: apgd, id: apgd-ce, loss: ce}\n"
NO_FAB = """eps: [8]
cascade: true
early_stop: true
attacks:
  - {name: apgd, id: apgd-ce, loss: ce, steps: 100}
  - {name: apgd_t, targets: 9, steps: 100}
  - {name: square, queries: 5000, p_init: 0.8}
"""
A, B, C, D, E = ("robench autoattack", "robench autoattack-malt", "torchattacks AA standard", "ART AA (no FAB)",
                 "robench AA without FAB-T")
RATIO_OF = {A: C, B: C, C: C, D: D, E: D, "PGD-10": C, "APGD-CE": C, "torchattacks AA, 10 steps": C}
LOCAL_MODELS = ("lenet-plain", "lenet-pgd", "timm-random")
AGREEMENT = ((C, B), (A, B), (D, E))  # (x, y): samples x fools that y does not, and the reverse
ART_DIFFERS = (
    "ART differs from AutoAttack standard where it cannot be set: its APGD keeps the last iterate of a run "
    "(fooling only if that one does), not the best; its targeted loss is its DLR with the target as the label "
    "(AutoAttack's targeted DLR has (z_pi1 - (z_pi3 + z_pi4) / 2) below); targets are every other class in "
    "index order (with 10 classes the same 9 as AutoAttack's most likely, in another order); ART's AutoAttack "
    "class would run every listed attack untargeted and then every one targeted, so the standard order "
    "(APGD-CE, APGD-T x 9, Square) is driven through art.attacks.evasion.auto_attack.run_attack, the step its "
    "AutoAttack takes per attack; no FAB in ART; first step size 2 eps as AutoAttack's; 1 restart; "
    "Square 5,000 queries, p_init 0.8, 1 restart.")


@dataclasses.dataclass
class Case:
    """One model on its images: what every side attacks."""

    name: str
    model: nn.Module
    cfg: InputConfig
    batches: list[Batch]
    ids: list[str]
    eps: tuple[float, ...]
    note: str = ""

    @property
    def labels(self) -> torch.Tensor:
        return torch.cat([b.labels for b in self.batches])


class LeNet5(nn.Module):
    """advertorch's MNIST LeNet5, as its state dict's shapes give it: two 3x3 convs (32, 64) with pools, 200, 10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 32, 3, padding=1), nn.Conv2d(32, 64, 3, padding=1)
        self.linear1, self.linear2 = nn.Linear(64 * 7 * 7, 200), nn.Linear(200, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.linear2(torch.relu(self.linear1(x.flatten(1))))


def robench_robust(case: Case, suite: Suite) -> np.ndarray:
    """robench's per-sample robustness under this suite: its worst-case row (one eps)."""
    plan = Plan.white_box([Participant("m", case.model, case.cfg)])
    out = Matrix.empty(case.ids, settings_of(suite), plan.pairs())
    run_batches(plan, ({case.cfg: b} for b in case.batches), suite, out, 0, Hooks())
    return np.asarray(worst.with_worst(out.pairs[("m", "m")]).correct()[-1], dtype=bool)


def torchattacks_robust(case: Case, eps: float, steps: int | None) -> np.ndarray:
    """torchattacks' AutoAttack standard: per sample, correct on the example it returns.

    torchattacks builds it with 10 steps for APGD, APGD-T and FAB (its attacks' defaults), where
    Croce & Hein's standard run, and robench's ``autoattack`` suite, take 100; ``steps`` sets them.
    """
    import torchattacks as ta

    right = []
    for b in case.batches:
        atk = ta.AutoAttack(case.model, norm="Linf", eps=eps / 255, version="standard", n_classes=10, seed=0)
        for a in atk._autoattack.attacks:
            if steps is not None and hasattr(a, "steps"):
                a.steps = steps
        x_adv = atk(b.images, b.labels)
        with torch.inference_mode():
            right.append((case.model(x_adv).argmax(1) == b.labels).numpy())
    return np.concatenate(right)


def art_robust(case: Case, eps: float) -> np.ndarray:
    """ART's attacks in AutoAttack standard's order (APGD-CE, APGD-T x 9, Square), per sample correct after."""
    from art.attacks.evasion import AutoProjectedGradientDescent, SquareAttack
    from art.attacks.evasion.auto_attack import run_attack
    from art.estimators.classification import PyTorchClassifier

    np.random.seed(0)  # ART draws its random starts and squares from numpy's global generator
    est = PyTorchClassifier(case.model, nn.CrossEntropyLoss(), (case.cfg.channels, *case.cfg.size), 10,
                            clip_values=(0.0, 1.0), device_type="cpu")
    e, n = eps / 255, len(case.labels)

    def apgd(loss: str, targeted: bool) -> AutoProjectedGradientDescent:
        return AutoProjectedGradientDescent(est, np.inf, e, 2 * e, 100, targeted, 1, n, loss, verbose=False)

    x = torch.cat([b.images for b in case.batches]).numpy()
    y = np.eye(10, dtype=np.float32)[case.labels.numpy()]
    robust = est.predict(x).argmax(1) == case.labels.numpy()
    x_adv, robust = run_attack(x, y, robust, apgd("cross_entropy", False), est, np.inf, e)
    dlr_t = apgd("difference_logits_ratio", True)
    for t in range(1, 10):  # every other class: (label + t) mod 10
        target = np.roll(y, t, axis=1)
        if robust.any():
            x_adv, robust = run_attack(x_adv, target, robust, dlr_t, est, np.inf, e)
    if robust.any():
        square = SquareAttack(est, np.inf, max_iter=5000, eps=e, p_init=0.8, nb_restarts=1, batch_size=n,
                              verbose=False)
        x_adv, robust = run_attack(x_adv, y, robust, square, est, np.inf, e)
    return np.asarray(robust, dtype=bool)


def at_eps(text: str, eps: float) -> Suite:
    """A one-eps suite (a built-in name or YAML text) at this eps."""
    suite = load_suite(text) if "\n" not in text else parse_suite(text, "bench")
    return dataclasses.replace(suite, attacks=tuple(dataclasses.replace(a, eps=(eps,)) for a in suite.attacks))


def sides_of(case: Case, eps: float, args: argparse.Namespace) -> dict[str, Callable[[], np.ndarray]]:
    """Every side to run on this case at this eps, by name."""
    sides = {A: lambda: robench_robust(case, at_eps("autoattack", eps)),
             B: lambda: robench_robust(case, at_eps("autoattack-malt", eps)),
             C: lambda: torchattacks_robust(case, eps, 100)}
    if args.art:
        sides[D] = lambda: art_robust(case, eps)
        sides[E] = lambda: robench_robust(case, at_eps(NO_FAB, eps))
    if args.table:
        sides["torchattacks AA, 10 steps"] = lambda: torchattacks_robust(case, eps, None)
        sides = {"PGD-10": lambda: robench_robust(case, at_eps(PGD10, eps)),
                 "APGD-CE": lambda: robench_robust(case, at_eps(APGD_CE, eps)), **sides}
    return sides


def measure(fn: Callable[[], np.ndarray], model: nn.Module) -> tuple[float, int, int, np.ndarray]:
    """CPU seconds of this process, forward and backward passes, and per-sample robustness of one call."""
    with count_passes(model) as passes:
        start = time.process_time()
        robust = fn()
        return time.process_time() - start, passes.forward, passes.backward, robust


def run_case(case: Case, eps: float, args: argparse.Namespace) -> list[dict]:
    """Every side on one case at one eps, alternating order over rounds; one record per side."""
    with torch.inference_mode():
        clean = float(np.mean(np.concatenate([(case.model(b.images).argmax(1) == b.labels).numpy()
                                              for b in case.batches])))
    sides = sides_of(case, eps, args)
    seen: dict[str, list] = {k: [] for k in sides}
    for r in range(args.rounds):
        for name in (list(sides) if r % 2 == 0 else list(reversed(sides))):
            seen[name].append(measure(sides[name], case.model))
    n = len(case.ids)
    return [{"model": case.name, "eps": eps, "side": name, "clean": clean, "n": n, "note": case.note,
             "cpu": statistics.median(s for s, _, _, _ in runs), "robust_each": runs[-1][3],
             "robust": float(runs[-1][3].mean()), "fwd": runs[-1][1] / n, "bwd": runs[-1][2] / n}
            for name, runs in seen.items()]


def zoo_case(spec: str, args: argparse.Namespace) -> Case:
    """A zoo model on the first digits test images (fewer for the robust step l.l. models)."""
    loaded = load_model(parse_spec(spec), 10)
    limit = args.robust_limit if "stepll" in spec else args.limit
    source = open_source("digits", "test", limit, 0)
    return Case(spec, loaded.module.eval(), loaded.input, list(source.batches(loaded.input, args.batch)),
                list(source.ids), args.eps)


def lenet_case(name: str, args: argparse.Namespace) -> Case | None:
    """advertorch's LeNet5 (plain or PGD-trained) on MNIST test images, or None (said) without its weights."""
    kind = "advtrained" if name == "lenet-pgd" else "clntrained"
    path = Path(args.lenet_dir) / f"mnist_lenet5_{kind}.pt"
    if not path.is_file():
        print(f"skipped {name}: no {path} (advertorch's advertorch_examples/trained_models/{path.name}; "
              "give its folder with --lenet-dir)", flush=True)
        return None
    model = LeNet5()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    cfg = InputConfig(channels=1, size=(28, 28))
    source = open_source(f"mnist:{args.mnist}", "test", args.robust_limit if kind == "advtrained" else args.limit, 0)
    return Case(name, model.eval(), cfg, list(source.batches(cfg, args.batch)), list(source.ids), (args.lenet_eps,),
                f"LeNets: eps in 1/255 ({args.lenet_eps:g}/255 = {args.lenet_eps / 255:.3g} in pixels), MNIST test")


def timm_case(args: argparse.Namespace) -> Case:
    """A 224 px timm resnet18 with seeded random weights on random images labelled by its own predictions."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    images = torch.rand(args.timm_images, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        labels = model(images).argmax(1)
    batch = Batch(images, labels, torch.arange(len(images)))
    return Case("timm-random", model, InputConfig(), [batch], [f"random:{i}" for i in range(len(images))],
                args.timm_eps,
                "random weights and images, labels = its own predictions (every sample attacked); timing only")


def make_case(name: str, args: argparse.Namespace) -> Case | None:
    """The case a --models entry names."""
    if name.startswith("lenet-"):
        return lenet_case(name, args)
    return timm_case(args) if name == "timm-random" else zoo_case(name, args)


def agreement(recs: list[dict]) -> list[str]:
    """Per-sample disagreements: samples x fools that y does not, and the reverse, for each pair that ran."""
    by = {r["side"]: r["robust_each"] for r in recs}
    return [f"{x} fools, {y} not: {int((~by[x] & by[y]).sum())}; reverse: {int((by[x] & ~by[y]).sum())}"
            for x, y in AGREEMENT if x in by and y in by]


HEAD = ("model", "eps", "n", "side", "clean", "robust", "CPU s", "ratio", "vs", "fwd/sample", "bwd/sample")


def row(r: dict, recs: list[dict]) -> tuple[str, ...]:
    """A record as table cells; the ratio is against torchattacks, or ART for the like-for-like side."""
    ref = next((x for x in recs if x["side"] == RATIO_OF[r["side"]]), None)
    ratio = f"{r['cpu'] / ref['cpu']:.2f}" if ref is not None and ref["cpu"] > 0 and ref is not r else ""
    return (r["model"], f"{r['eps']:g}", str(r["n"]), r["side"], f"{r['clean']:.3f}", f"{r['robust']:.3f}",
            f"{r['cpu']:.2f}", ratio, RATIO_OF[r["side"]] if ratio else "", f"{r['fwd']:.1f}", f"{r['bwd']:.1f}")


def markdown(blocks: list[tuple[list[dict], list[str]]], header: str) -> str:
    """The whole table as Markdown, each case's agreement under it."""
    lines = [header, "", "| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    for recs, _ in blocks:
        lines += ["| " + " | ".join(row(r, recs)) + " |" for r in recs]
    lines += ["", "Per-sample agreement (samples the first side fools that the second does not, and the reverse):", ""]
    lines += [f"- {recs[0]['model']} eps {recs[0]['eps']:g}: " + "; ".join(agree) for recs, agree in blocks]
    notes = sorted({r["note"] for recs, _ in blocks for r in recs if r["note"]})
    return "\n".join(lines + [""] + [f"Note: {n}" for n in notes] + [""])


def parse_args() -> argparse.Namespace:
    """The bench's flags; ART runs where it is importable and --no-art is not given."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="zoo:resnet-base", help="zoo specs, lenet-plain, lenet-pgd, timm-random")
    p.add_argument("--eps", default="8", help="eps list for the zoo models, in 1/255")
    p.add_argument("--lenet-eps", type=float, default=76.5, help="eps for the LeNets in 1/255 (76.5 = 0.3)")
    p.add_argument("--limit", type=int, default=40, help="images for the plainly trained models")
    p.add_argument("--robust-limit", type=int, default=16, help="images for zoo step l.l. and the PGD-trained LeNet")
    p.add_argument("--timm-images", type=int, default=8)
    p.add_argument("--timm-eps", default="8", help="eps list for timm-random, in 1/255")
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--mnist", default="../shared/data/mnist-test-1k", help="folder of MNIST's test IDX files")
    p.add_argument("--lenet-dir", default="../shared/models/advertorch", help="folder of advertorch's LeNet5 weights")
    p.add_argument("--no-art", action="store_true", help="skip ART's side and its like-for-like robench side")
    p.add_argument("--markdown", metavar="PATH", help="also write the table as Markdown here")
    p.add_argument("--table", action="store_true", help="also PGD-10, APGD-CE and torchattacks' own 10 steps")
    args = p.parse_args()
    bad = [m for m in args.models.split(",") if m.startswith(("lenet", "timm")) and m not in LOCAL_MODELS]
    if bad:
        p.error(f"--models: no model {bad[0]!r}; besides zoo specs: {', '.join(LOCAL_MODELS)}")
    args.eps = tuple(float(e) for e in args.eps.split(","))
    args.timm_eps = tuple(float(e) for e in args.timm_eps.split(","))
    args.art = not args.no_art and importlib.util.find_spec("art") is not None
    return args


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    header = (f"python {' '.join(sys.argv)}\n\n"
              f"{args.threads} thread(s), {args.rounds} round(s) in alternating order, CPU seconds of this process "
              "(median over rounds), passes per sample; ratio goals: robench autoattack / torchattacks <= 0.8, "
              "robench without FAB-T / ART <= 0.8; the cheaper suite must fool every sample the others fool")
    print(header)
    print(f"ART: {ART_DIFFERS}" if args.art else "ART (adversarial-robustness-toolbox) not importable or --no-art: "
          "sides d and e skipped")
    widths = (20, 5, 5, 26, 7, 8, 9, 7, 26, 11, 11)
    print("".join(f"{h:<{w}}" for h, w in zip(HEAD, widths, strict=True)), flush=True)
    blocks = []
    for name in args.models.split(","):
        case = make_case(name, args)
        if case is None:
            continue
        for eps in case.eps:
            recs = run_case(case, eps, args)
            blocks.append((recs, agreement(recs)))
            for r in recs:
                print("".join(f"{c:<{w}}" for c, w in zip(row(r, recs), widths, strict=True)), flush=True)
            print("  agreement: " + "; ".join(blocks[-1][1]) + (f"\n  note: {case.note}" if case.note else ""),
                  flush=True)
            if args.markdown:  # after every case, so that a long run stopped early leaves what it measured
                Path(args.markdown).write_text(markdown(blocks, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())

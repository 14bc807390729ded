"""Search for a training recipe whose model shows label leaking (Kurakin, Goodfellow & Bengio 2017, sec. 4.1).

A model adversarially trained with FGSM on *true* labels may score higher on FGSM-true-label
examples than on clean ones (and than on FGSM examples crafted with its own *predicted*
label): the true label shapes the perturbation and the model learns to read it back.
fgsm_true and fgsm_predicted coincide on every sample the model gets right when clean, so a
leak can only show on the clean-misclassified ones; the script therefore also reports, among
those, how many each attack turns right, and checks that the two attacks agree elsewhere.

Each recipe is a ``robench.models.recipe.TrainConfig`` trained with ``robench.train.loop.train`` on one
CPU thread into ``/tmp/leak_search/NAME.safetensors`` (a ``NAME.json`` beside it keeps the
recipe and the training time; an existing checkpoint of the same recipe is reused unless
``--retrain``), then checked with ``robench.run.leak.run_leak_check`` (``robench leak-check``)
on the test split, fgsm (true label), fgsm (predicted label) and step_ll at eps 2, 4, 8, 16 and
32 (1/255 units) and the eps it was trained at; ``--worst-limit N`` adds the worst case over
APGD-CE and APGD-T (``autoattack-fast``) at eps 8 and the training eps on N test images. The
last table has one row per recipe at its training eps.

    python bench/leak_search.py                       # every recipe (long: trains what is missing)
    python bench/leak_search.py --list                # recipe names and configs
    python bench/leak_search.py --recipes fm-fgsm-true fm-fgsm-pred fm-stepll
    python bench/leak_search.py --eval-only           # only recipes already trained
    python bench/leak_search.py --eval-only --recipes fm60k-resnet-fgsm-true-fixed76.5 --worst-limit 500
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402

from robench.attacks.suite import load_suite, override  # noqa: E402
from robench.models.recipe import TrainConfig  # noqa: E402
from robench.models.zoo import ZOO  # noqa: E402
from robench.run.evaluate import EvalConfig, run_eval  # noqa: E402
from robench.run.leak import LeakConfig, leak_suite, run_leak_check  # noqa: E402
from robench.run.runspec import RunSpec  # noqa: E402
from robench.train.loop import train  # noqa: E402

OUT_DIR = Path("/tmp/leak_search")
EPS = (2, 4, 8, 16, 32)  # 2-16 as in the paper's tables; 32 for recipes trained with larger eps
WORST_SUITE = "autoattack-fast"  # APGD-CE then APGD-T: what separates leaking from robustness

_FM = dict(data="fashion-mnist", image_size=28)
UNIFORM = 1e4  # eps_sigma this large makes |N(0, sigma)| truncated to [0, eps_max] ~uniform

RECIPES: dict[str, TrainConfig] = {
    # digits: the zoo's effnet-fgsm-true recipe (no leak: 94.2 % under fgsm eps 8 vs 98.3 % clean)
    "dg-zoo-fgsm-true": TrainConfig(arch="test_efficientnet", train_attack="fgsm", label="true", epochs=20),
    # digits, all-adversarial, ~uniform eps up to 16
    "dg-fgsm-true-a1-u16": TrainConfig(arch="test_efficientnet", train_attack="fgsm", label="true", epochs=20,
                                       adv_fraction=1.0, lam=1.0, eps_max=16, eps_sigma=UNIFORM),
    # Fashion-MNIST (28 px, 10000 training images)
    "fm-fgsm-true-a1-u16": TrainConfig(arch="test_efficientnet", train_attack="fgsm", label="true", epochs=10,
                                       adv_fraction=1.0, lam=1.0, eps_max=16, eps_sigma=UNIFORM, limit=10000, **_FM),
    "fm-fgsm-true-a05-u16": TrainConfig(arch="test_efficientnet", train_attack="fgsm", label="true", epochs=10,
                                        adv_fraction=0.5, lam=1.0, eps_max=16, eps_sigma=UNIFORM, limit=10000, **_FM),
    "fm-fgsm-true-a1-u32": TrainConfig(arch="test_efficientnet", train_attack="fgsm", label="true", epochs=10,
                                       adv_fraction=1.0, lam=1.0, eps_max=32, eps_sigma=UNIFORM, limit=10000, **_FM),
    "fm-fgsm-true-a1-u64": TrainConfig(arch="test_efficientnet", train_attack="fgsm", label="true", epochs=10,
                                       adv_fraction=1.0, lam=1.0, eps_max=64, eps_sigma=UNIFORM, limit=10000, **_FM),
    "fm-resnet-fgsm-true-a1-u16": TrainConfig(arch="test_resnet", train_attack="fgsm", label="true", epochs=10,
                                              adv_fraction=1.0, lam=1.0, eps_max=16, eps_sigma=UNIFORM, limit=10000,
                                              **_FM),
    # capacity and length: the full 60000-image training split, 20 epochs, the wider model
    "fm-resnet-fgsm-true-a1-u16-full": TrainConfig(arch="test_resnet", train_attack="fgsm", label="true", epochs=20,
                                                   adv_fraction=1.0, lam=1.0, eps_max=16, eps_sigma=UNIFORM, **_FM),
    # memorization: few images seen many times, so the model can learn the true-label perturbation itself
    "fm-resnet-fgsm-true-a1-u16-2k-e60": TrainConfig(arch="test_resnet", train_attack="fgsm", label="true", epochs=60,
                                                     adv_fraction=1.0, lam=1.0, eps_max=16, eps_sigma=UNIFORM,
                                                     limit=2000, **_FM),
    "dg-resnet-fgsm-true-a1-u32-e100": TrainConfig(arch="test_resnet", train_attack="fgsm", label="true", epochs=100,
                                                   adv_fraction=1.0, lam=1.0, eps_max=32, eps_sigma=UNIFORM),
}


# issue 16: more capacity and fixed-eps FGSM-true training (no random draw, every example adversarial), which
# the catastrophic-overfitting literature (Wong et al. 2020) reports to give FGSM accuracy above clean
for _eps in (8, 16, 32):
    RECIPES[f"dg-resnet34-fgsm-true-a1-fixed{_eps}"] = TrainConfig(
        arch="resnet34", train_attack="fgsm", label="true", epochs=20, adv_fraction=1.0, lam=1.0, eps_max=_eps,
        eps_dist="fixed")


def _control(name: str, base: str, **changes: object) -> None:
    RECIPES[name] = dataclasses.replace(RECIPES[base], **changes)


# controls for the Fashion-MNIST headline recipe: the same with predicted labels, and with step_ll
_control("fm-fgsm-pred-a1-u16", "fm-fgsm-true-a1-u16", label="predicted")
_control("fm-stepll-a1-u16", "fm-fgsm-true-a1-u16", train_attack="step_ll")


# issue 30: the settings where the literature reports the effect (Madry et al. 2018, section 4: FGSM training at
# eps 0.3 px on MNIST overfits to the FGSM examples at high capacity). Half of each minibatch adversarial (the
# paper's k = 16 of 32; the model keeps seeing clean images), lambda 1, eps fixed (no draw, no random start), the
# full 60,000 Fashion-MNIST training images at 28 px; 76.5/255 is 0.3 px, 25.5 and 51 are 0.1 and 0.2 px.
_FM60 = dict(adv_fraction=0.5, lam=1.0, eps_dist="fixed", **_FM)
for _eps in (25.5, 51.0, 76.5):
    RECIPES[f"fm60k-resnet-fgsm-true-fixed{_eps:g}"] = TrainConfig(
        arch="test_resnet", train_attack="fgsm", label="true", epochs=5, eps_max=_eps, **_FM60)
RECIPES["dg-resnet-fgsm-true-fixed76.5"] = TrainConfig(  # the same on digits: 98.6% clean leaves it nothing to fix
    arch="test_resnet", train_attack="fgsm", label="true", epochs=20, eps_max=76.5, adv_fraction=0.5, lam=1.0,
    eps_dist="fixed")
assert RECIPES["fm60k-resnet-fgsm-true-fixed76.5"] == ZOO["fm-resnet-fgsm-true"].config  # the zoo's file is this one
RECIPES["fm60k-effnet-fgsm-true-fixed76.5"] = TrainConfig(
    arch="test_efficientnet", train_attack="fgsm", label="true", epochs=5, eps_max=76.5, **_FM60)
RECIPES["fm60k-resnet18-fgsm-true-fixed76.5"] = TrainConfig(  # the wide one: 11.2 M parameters, 30x test_resnet
    arch="resnet18", train_attack="fgsm", label="true", epochs=2, eps_max=76.5, **_FM60)
_control("fm60k-resnet-fgsm-pred-fixed76.5", "fm60k-resnet-fgsm-true-fixed76.5", label="predicted")
_control("fm60k-resnet-stepll-fixed76.5", "fm60k-resnet-fgsm-true-fixed76.5", train_attack="step_ll")
assert RECIPES["fm60k-resnet-fgsm-pred-fixed76.5"] == ZOO["fm-resnet-fgsm-pred"].config
assert RECIPES["fm60k-resnet-stepll-fixed76.5"] == ZOO["fm-resnet-stepll"].config
_control("fm60k-resnet18-fgsm-pred-fixed76.5", "fm60k-resnet18-fgsm-true-fixed76.5", label="predicted")


def ckpt_path(name: str) -> Path:
    return OUT_DIR / f"{name}.safetensors"


def train_recipe(name: str, cfg: TrainConfig, retrain: bool) -> dict:
    """Train (or reuse) a recipe's checkpoint; returns the sidecar record (recipe, train_s, val)."""
    side = OUT_DIR / f"{name}.json"
    recipe = dataclasses.asdict(cfg)
    if not retrain and side.is_file() and ckpt_path(name).is_file():
        rec = json.loads(side.read_text())
        if rec.get("recipe") == recipe:
            return rec
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    print(f"[{name}] training {cfg}", flush=True)
    t0 = time.perf_counter()
    result = train(cfg, ckpt_path(name))
    train_s = time.perf_counter() - t0
    rec = {"name": name, "recipe": recipe, "train_s": round(train_s, 1),
           "val_accuracy": result.meta["val_accuracy"], "history": result.history.to_dict("records")}
    side.write_text(json.dumps(rec, indent=1))
    print(f"[{name}] trained in {train_s:.0f} s, test accuracy {100 * result.meta['val_accuracy']:.1f} %", flush=True)
    return rec


def evaluate(name: str, cfg: TrainConfig, limit: int | None, batch_size: int,
             eps_list: tuple[float, ...] = EPS) -> dict:
    """``robench leak-check``'s rows and verdict, and the split into clean-right / clean-wrong samples."""
    eps_list = tuple(dict.fromkeys([*eps_list, *([cfg.eps_max] if cfg.train_attack != "none" else [])]))
    run = RunSpec(data=cfg.data, suite=leak_suite(eps_list), limit=limit, seed=0, batch_size=batch_size,
                  device="cpu", health_probes=False)
    res = run_leak_check(LeakConfig(EvalConfig((f"leak={ckpt_path(name)}",), run)))
    out = res.outcomes["leak"]
    pred = np.asarray(out.pred)
    labels = np.asarray(out.labels)
    setting = {(a, float(e)): i for i, (a, e) in enumerate(out.settings)}
    clean_right = pred[setting[("clean", 0.0)]] == labels
    per_eps = {}
    for r in res.rows.itertuples():
        t = pred[setting[("fgsm_true", float(r.eps))]]
        p = pred[setting[("fgsm_predicted", float(r.eps))]]
        per_eps[f"{r.eps:g}"] = {
            "fgsm_true": r.fgsm_true_top1, "fgsm_predicted": r.fgsm_predicted_top1, "step_ll": r.step_ll_top1,
            **{f"{g}{s}": getattr(r, f"{g}{s}") for g in ("leak_gap", "adv_minus_clean") for s in ("", "_low",
                                                                                                   "_high")},
            # among clean-misclassified samples: how many each fgsm variant turns right
            "wrong_fixed_by_true": int((t[~clean_right] == labels[~clean_right]).sum()),
            "wrong_fixed_by_pred": int((p[~clean_right] == labels[~clean_right]).sum()),
            # sanity: the two fgsm variants must agree on clean-right samples
            "disagree_on_clean_right": int((t[clean_right] != p[clean_right]).sum()),
        }
    return {"clean": float(res.rows["clean_top1"].iloc[0]), "n": len(labels),
            "n_clean_wrong": int((~clean_right).sum()), "verdict": res.verdicts["leak"], "eps": per_eps}


def worst_case(name: str, cfg: TrainConfig, limit: int, eps_list: tuple[float, ...]) -> dict[str, float]:
    """Robust accuracy (the per-sample worst case over ``WORST_SUITE``) at each eps, on ``limit`` test images."""
    suite = override(load_suite(WORST_SUITE), (), eps_list)
    res = run_eval(EvalConfig((f"leak={ckpt_path(name)}",), RunSpec(data=cfg.data, suite=suite, limit=limit, seed=0,
                                                                   device="cpu", health_probes=False)))
    rows = res.rows[res.rows["attack"] == "worst"]
    return {f"{r.eps:g}": float(r.top1) for r in rows.itertuples()}


def markdown(name: str, rec: dict, ev: dict) -> str:
    """One recipe's table."""
    lines = [f"### `{name}`", "",
             f"train {rec['train_s']:.0f} s (1 thread); test n = {ev['n']}, clean top-1 {100 * ev['clean']:.1f} %"
             f" ({ev['n_clean_wrong']} clean-misclassified); leak-check verdict {ev['verdict']}", "",
             "| eps | fgsm_true | fgsm_predicted | step_ll | leak_gap | adv_minus_clean "
             "| wrong->right (true / pred) |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for eps, m in ev["eps"].items():
        lines.append(f"| {eps} | {100 * m['fgsm_true']:.1f} | {100 * m['fgsm_predicted']:.1f} | "
                     f"{100 * m['step_ll']:.1f} | {_gap(m, 'leak_gap')} | {_gap(m, 'adv_minus_clean')} | "
                     f"{m['wrong_fixed_by_true']} / {m['wrong_fixed_by_pred']} |")
    return "\n".join(lines) + "\n"


def _gap(m: dict, name: str) -> str:
    return f"{100 * m[name]:+.1f} [{100 * m[name + '_low']:+.1f}, {100 * m[name + '_high']:+.1f}]"


def summary(results: dict) -> str:
    """One row per recipe at the eps it was trained at: the closing table of issue 30."""
    lines = ["| recipe | data | model (parameters) | eps | epochs | train s | clean | FGSM true | FGSM pred | "
             "leak gap [interval] | verdict | worst case (eps 8; trained eps) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for name, r in results.items():
        cfg, ev = RECIPES[name], r["eval"]
        eps = f"{cfg.eps_max:g}"
        m = ev["eps"][eps]
        params = sum(t.numel() for t in timm.create_model(cfg.arch, num_classes=10).parameters())
        worst = "; ".join(f"{100 * v:.1f}" for v in r.get("worst", {}).values()) or "-"
        data = f"{cfg.data} {cfg.limit or 'all'}"
        lines.append(f"| {name} | {data} | {cfg.arch} ({params / 1e6:.2f} M) | {eps} | {cfg.epochs} | "
                     f"{r['train']['train_s']:.0f} | {100 * ev['clean']:.1f} | {100 * m['fgsm_true']:.1f} | "
                     f"{100 * m['fgsm_predicted']:.1f} | {_gap(m, 'leak_gap')} | {ev['verdict']} | {worst} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", nargs="+", metavar="NAME", help="recipes to run (default: all)")
    ap.add_argument("--list", action="store_true", help="print the recipes and exit")
    ap.add_argument("--retrain", action="store_true", help="train even when a matching checkpoint exists")
    ap.add_argument("--eval-only", action="store_true", help="skip recipes that have no checkpoint yet")
    ap.add_argument("--train-only", action="store_true", help="train, do not evaluate")
    ap.add_argument("--eval-limit", type=int, default=2000,
                    help="test images for Fashion-MNIST (digits always uses its whole 360-image test split)")
    ap.add_argument("--eps", type=float, nargs="+", default=list(EPS), help="attack eps (1/255 units)")
    ap.add_argument("--batch-size", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--worst-limit", type=int, default=0,
                    help=f"also the worst case over {WORST_SUITE} at eps 8 and the training eps on this many test "
                         f"images (0: not run)")
    ap.add_argument("--json", type=Path, help="also write all results to this JSON file")
    args = ap.parse_args(argv)
    if args.list:
        for name, cfg in RECIPES.items():
            print(f"{name}: {cfg}")
        return 0
    names = args.recipes or list(RECIPES)
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        print(f"leak_search.py: error: unknown recipe(s): {', '.join(unknown)}; known: {', '.join(RECIPES)}",
              file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    results = {}
    for name in names:
        cfg = RECIPES[name]
        if args.eval_only and not (OUT_DIR / f"{name}.json").is_file():
            continue
        rec = train_recipe(name, cfg, args.retrain)
        if args.train_only:
            continue
        limit = None if cfg.data == "digits" else args.eval_limit
        t0 = time.perf_counter()
        ev = evaluate(name, cfg, limit, args.batch_size, tuple(args.eps))
        ev["eval_s"] = round(time.perf_counter() - t0, 1)
        results[name] = {"train": {k: rec[k] for k in ("recipe", "train_s", "val_accuracy")}, "eval": ev}
        if args.worst_limit:
            results[name]["worst"] = worst_case(name, cfg, args.worst_limit, tuple(dict.fromkeys((8.0, cfg.eps_max))))
        print(markdown(name, rec, ev), flush=True)
    if results:
        print(summary(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Attack suites: the default attacks.yaml, eps parsing, and errors that name the key and its line."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from robench.attacks.iterative import BimConfig, IterLLConfig, PgdConfig
from robench.attacks.single_step import FgsmConfig, StepLLConfig
from robench.attacks.suite import DEFAULT_SUITE, built_in_suites, load_suite, override, parse_eps, parse_suite
from robench.core.eps import parse_eps_list
from robench.errors import FieldError, RobenchError

# ---------------------------------------------------------------- the default suite


def test_default_suite_is_the_papers_four_plus_pgd() -> None:
    suite = load_suite()
    assert [(a.id, a.name) for a in suite.attacks] == [
        ("fgsm", "fgsm"), ("step_ll", "step_ll"), ("bim", "bim"), ("iter_ll", "iter_ll"), ("pgd", "pgd"),
    ]
    assert all(a.eps == (2.0, 4.0, 8.0, 16.0) for a in suite.attacks)
    configs = [a.config for a in suite.attacks]
    assert configs == [FgsmConfig(label="true"), StepLLConfig(), BimConfig(), IterLLConfig(), PgdConfig(steps=10)]
    assert suite.source == "paper (built-in)" and not suite.cascade and not suite.early_stop


def test_repo_attacks_yaml_is_the_packaged_one() -> None:
    repo_copy = Path(__file__).resolve().parents[1] / "attacks.yaml"
    assert repo_copy.read_text() == DEFAULT_SUITE.read_text()
    assert load_suite(repo_copy).attacks == load_suite().attacks


def test_describe_is_plain_data() -> None:
    described = load_suite().describe()
    assert described["attacks"][4] == {"id": "pgd", "name": "pgd", "eps": [2.0, 4.0, 8.0, 16.0], "label": "true",
                                       "steps": 10, "step_size": None, "random_start": True,
                                       "norm": "linf"}


# ---------------------------------------------------------------- eps


@pytest.mark.parametrize(
    ("value", "eps"),
    [("8/255", 8.0), ("16/255", 16.0), ("8", 8.0), (" 8 ", 8.0), ("1/510", 0.5), (1.5, 1.5), (4, 4.0), ("0", 0.0),
     ("255", 255.0), ("1/2", 127.5), ("1e1", 10.0), ("0.3*255", 76.5), ("76.5/255", 76.5), ("0.3px", 76.5),
     ("0.3 PX", 76.5), ("8/255px", 8.0)],
)
def test_parse_eps(value, eps: float) -> None:
    assert parse_eps(value) == eps


@pytest.mark.parametrize(("value", "eps"), [("0.3", 76.5), (0.031, 7.905), ("8/255", 8.0), ("1", 255.0)])
def test_parse_eps_in_pixels(value, eps: float) -> None:
    assert parse_eps(value, unit="pixel") == pytest.approx(eps, abs=1e-12)


def test_the_unit_trap() -> None:
    """eps 0.3 as MNIST papers write it would attack 255 times too weakly: refused, with both readings."""
    with pytest.raises(RobenchError) as err:
        parse_eps_list("2,0.3")
    assert str(err.value) == (
        "eps: eps 0.3 is in 1/255 units, i.e. 0.0012 in pixels. Did you mean 0.3 in pixels? "
        "Write 76.5 or 0.3*255 or 76.5/255 (or 0.3px, or eps_unit pixel)")  # the library names fields
    with pytest.raises(RobenchError, match=r"76\.5/255 \(or 0\.3px\)$"):  # in YAML no option makes numbers pixels
        parse_eps(0.3, "s.yaml line 1: 'eps'")
    with pytest.raises(RobenchError, match=r"eps 2 in pixels is 510/255; an eps in pixels must lie in \[0, 1\]"):
        parse_eps_list("2", unit="pixel")
    for value in (0.031, "0.5", 0.999):
        with pytest.raises(RobenchError, match="is in 1/255 units"):
            parse_eps(value)


@pytest.mark.parametrize(
    ("value", "why"),
    [("-1", "out of range"), (-0.5, "out of range"), ("256", "out of range"), (255.5, "out of range"),
     ("300/255", "out of range"), ("nan", "not a number"), ("inf", "not a number"), ("abc", "not a number"),
     ("1e400", "out of range"), ("2px", "must lie in \\[0, 1\\]"),
     ("", "not a number"), ("1/0", "not a number"), ("__import__('os')", "not a number"),
     ("2**3", "not a number"), (None, "not a number"), (True, "must be a number"), (False, "must be a number")],
)
def test_parse_eps_rejects(value, why: str) -> None:
    with pytest.raises(RobenchError, match=why) as err:
        parse_eps(value, "--eps")
    assert str(err.value).startswith("--eps: ")


def test_parse_eps_never_evaluates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RobenchError):
        parse_eps("open('pwned', 'w') and 1")
    assert not (tmp_path / "pwned").exists()


def test_parse_eps_list() -> None:
    assert parse_eps_list("2,4,8") == (2.0, 4.0, 8.0)
    assert parse_eps_list(" 2, 8/255 ,1/510,") == (2.0, 8.0, 0.5)
    assert parse_eps_list("0.01,0.03", unit="pixel") == (2.55, 7.65)
    with pytest.raises(RobenchError, match="at least one eps"):
        parse_eps_list(" , ")
    with pytest.raises(RobenchError, match=r"^eps: eps '300' is out of range"):
        parse_eps_list("2,300")


@pytest.mark.parametrize(("text", "unit", "message"), [
    ("8,8", "1/255", "eps: eps 8 is given twice; give each eps once"),
    ("2, 8,8.0", "1/255", "eps: eps 8 is given twice (8 and 8.0 are both 8 in 1/255 units); give each eps once"),
    ("8/255,8", "1/255", "eps: eps 8 is given twice (8/255 and 8 are both 8 in 1/255 units); give each eps once"),
    ("0.03px,7.65", "1/255", "eps: eps 7.65 is given twice (0.03px and 7.65 are both 7.65 in 1/255 units); "
                             "give each eps once"),
    ("0.01,2.55/255", "pixel", "eps: eps 2.55 is given twice (0.01 and 2.55/255 are both 2.55 in 1/255 units); "
                               "give each eps once"),
])
def test_an_eps_given_twice_is_refused(text: str, unit: str, message: str) -> None:
    """A repeat would run every attack twice and write duplicate rows, which a gate counts as fewer checks."""
    with pytest.raises(RobenchError) as err:
        parse_eps_list(text, unit=unit)
    assert str(err.value) == message


# ---------------------------------------------------------------- YAML documents and their errors

SUITE = """\
# a hand-written suite
eps: [2, 4]
attacks:
  - name: fgsm
    label: predicted
  - name: pgd
    steps: 3
    eps: [8/255, 16]
  - name: bim
    id: bim-long
    steps: 20
"""
# line numbers of SUITE: 2 eps, 3 attacks, 4 fgsm, 5 label, 6 pgd, 7 steps, 8 eps, 9 bim, 10 id, 11 steps


def test_suite_document_parses() -> None:
    suite = parse_suite(SUITE, "s.yaml")
    assert [(a.id, a.name, a.eps) for a in suite.attacks] == [
        ("fgsm", "fgsm", (2.0, 4.0)), ("pgd", "pgd", (8.0, 16.0)), ("bim-long", "bim", (2.0, 4.0)),
    ]
    assert suite.attacks[0].config == FgsmConfig(label="predicted")
    assert suite.attacks[1].config == PgdConfig(steps=3)
    assert suite.attacks[2].config == BimConfig(steps=20)
    assert suite.source == "s.yaml"


def test_suite_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(SUITE.replace("    steps: 3", "    steps: ten"))
    with pytest.raises(RobenchError) as err:
        load_suite(path)
    assert str(err.value) == f"{path} line 7: 'steps' of attack 'pgd' must be int, got 'ten'"
    with pytest.raises(RobenchError, match="attack suite file not found"):
        load_suite(tmp_path / "none.yaml")
    (tmp_path / "latin1.yaml").write_bytes(b"eps: [2]\n# \xe9\n")
    with pytest.raises(RobenchError, match="cannot read attack suite"):
        load_suite(tmp_path / "latin1.yaml")


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("eps: [2, 4]", "eps: [2, 4]\nrepeat: 3",
         "s.yaml line 3: unknown key 'repeat'; allowed: eps, attacks, cascade, early_stop"),
        ("    steps: 20", "    steps: 20\n    stepsize: 1",
         "s.yaml line 12: unknown key 'stepsize' for attack 'bim'; allowed: label, step_size, steps, norm"),
        ("    steps: 3", "    steps: ten",
         "s.yaml line 7: 'steps' of attack 'pgd' must be int, got 'ten'"),
        ("    steps: 3", "    steps: 2.5",
         "s.yaml line 7: 'steps' of attack 'pgd' must be int, got 2.5"),
        ("    steps: 3", "    random_start: maybe",
         "s.yaml line 7: 'random_start' of attack 'pgd' must be bool, got 'maybe'"),
        ("    label: predicted", "    label: guess",
         "s.yaml line 5: 'label' of attack 'fgsm' must be true | predicted | target, got 'guess'"),
        ("    steps: 20", "    steps: -20",
         "s.yaml line 11: 'steps' of attack 'bim' must be >= 0, got -20"),
        ("eps: [2, 4]", "eps: [2, -4]",
         "s.yaml line 2: 'eps': eps -4 is out of range; it must lie in [0, 255] (1/255 units)"),
        ("    eps: [8/255, 16]", "    eps: [8/255, 999]",
         "s.yaml line 8: 'eps': eps 999 is out of range; it must lie in [0, 255] (1/255 units)"),
        ("    eps: [8/255, 16]", "    eps: [true]",
         "s.yaml line 8: 'eps': eps must be a number, got True"),
        ("eps: [2, 4]", "eps: [2, 4, 2.0]",
         "s.yaml line 2: 'eps': eps 2 is given twice (2 and 2.0 are both 2 in 1/255 units); give each eps once"),
        ("    eps: [8/255, 16]", "    eps: [8/255, 8]",
         "s.yaml line 8: 'eps': eps 8 is given twice (8/255 and 8 are both 8 in 1/255 units); give each eps once"),
        ("    eps: [8/255, 16]", "    eps: []",
         "s.yaml line 8: 'eps' is empty; give a list such as [2, 4, 8, 16]"),
        ("  - name: pgd", "  - name: pgdd",
         "s.yaml line 6: unknown attack 'pgdd'; did you mean pgd, apgd, apgd_t?"),
        ("  - name: bim", "  - name: iter-ll",
         "s.yaml line 9: unknown attack 'iter-ll'; did you mean iter_ll?"),
        ("    id: bim-long", "    id: fgsm",
         "s.yaml line 10: attack id 'fgsm' is used twice (first at s.yaml line 4); give one entry its own 'id:'"),
        ("    id: bim-long", "    id: clean",
         "s.yaml line 10: attack id 'clean' is reserved for clean accuracy; give the entry another 'id:'"),
        ("    steps: 20", "    steps: 20\n  - name: fgsm",
         "s.yaml line 12: attack id 'fgsm' is used twice (first at s.yaml line 4); give one entry its own 'id:'"),
        ("    steps: 3", "    steps: 3\n    steps: 5",
         "s.yaml line 8: invalid YAML: duplicate key 'steps' (first at line 7)"),
        ("    steps: 3", "    steps: [3",
         "s.yaml line 8: invalid YAML: expected ',' or ']', but got ':'"),
        ("    label: predicted", "   label: predicted",
         "s.yaml line 5: invalid YAML: expected <block end>, but found '<block mapping start>'"),
    ],
)
def test_suite_errors_name_key_and_line(old: str, new: str, expected: str) -> None:
    assert SUITE.count(old) == 1
    with pytest.raises(RobenchError) as err:
        parse_suite(SUITE.replace(old, new), "s.yaml")
    assert str(err.value) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "s.yaml: a suite is a mapping with 'eps' and 'attacks' keys"),
        ("- fgsm\n", "s.yaml: a suite is a mapping with 'eps' and 'attacks' keys"),
        ("eps: [2]\nattacks: []\n", "s.yaml line 2: 'attacks' must be a non-empty list"),
        ("eps: [2]\n", "s.yaml line 1: 'attacks' must be a non-empty list"),
        ("attacks:\n  - name: fgsm\n", "s.yaml line 2: attack 'fgsm' has no eps; add a top-level 'eps: [2, 4, 8, 16]'"),
        ("eps: 2\nattacks:\n  - label: true\n", "s.yaml line 3: attack entry needs 'name: <attack>'"),
    ],
)
def test_suite_structure_errors(text: str, expected: str) -> None:
    with pytest.raises(RobenchError) as err:
        parse_suite(text, "s.yaml")
    assert str(err.value).startswith(expected)


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    text = f"eps: !!python/object/apply:os.system ['touch {tmp_path / 'pwned'}']\nattacks:\n  - name: fgsm\n"
    with pytest.raises(RobenchError, match=r"^s\.yaml line 1: invalid YAML"):
        parse_suite(text, "s.yaml")
    assert not (tmp_path / "pwned").exists()


def test_label_true_may_be_a_yaml_boolean() -> None:
    suite = parse_suite("eps: [2]\nattacks:\n  - name: bim\n    label: True\n", "s.yaml")
    assert suite.attacks[0].config == BimConfig(label="true")


# ---------------------------------------------------------------- override (--attack, --eps)


def test_override_names_and_eps() -> None:
    suite = parse_suite(SUITE, "s.yaml")
    assert override(suite) == suite
    picked = override(suite, ("bim-long", "pgd"))
    assert [(a.id, a.eps) for a in picked.attacks] == [("bim-long", (2.0, 4.0)), ("pgd", (8.0, 16.0))]
    assert picked.attacks[0].config == BimConfig(steps=20)  # suite entries keep their options
    swept = override(suite, eps=(1.0,))
    assert [a.eps for a in swept.attacks] == [(1.0,)] * 3 and swept.attacks[1].config.steps == 3


def test_override_falls_back_to_registry_defaults() -> None:
    suite = parse_suite(SUITE, "s.yaml")
    picked = override(suite, ("iter_ll", "bim"), (8.0, 16.0))
    assert [(a.id, a.name, a.eps, a.config) for a in picked.attacks] == [
        ("iter_ll", "iter_ll", (8.0, 16.0), IterLLConfig()), ("bim", "bim", (8.0, 16.0), BimConfig()),
    ]
    assert override(suite, ("step_ll",)).attacks[0].eps == (2.0, 4.0)  # the suite's first eps list


def test_override_errors() -> None:
    suite = load_suite()
    with pytest.raises(RobenchError, match=r"unknown attack 'fgsmm'; did you mean fgsm, ti_fgsm, ni_fgsm\?"):
        override(suite, ("fgsmm",))
    with pytest.raises(RobenchError, match="^attack fgsm is given twice"):
        override(suite, ("fgsm", "fgsm"))


# ---------------------------------------------------------------- built-in suites, cascade and early_stop


def test_built_in_suites_by_name() -> None:
    aa = load_suite("autoattack")
    assert [(a.id, a.name) for a in aa.attacks] == [("apgd-ce", "apgd"), ("apgd_t", "apgd_t"), ("fab_t", "fab_t"),
                                                    ("square", "square")]
    assert aa.cascade and aa.early_stop and all(a.eps == (8.0,) for a in aa.attacks)
    assert aa.attacks[0].config.loss == "ce" and aa.attacks[1].config.targets == 9
    assert aa.attacks[3].config.queries == 5000 and aa.attacks[3].config.p_init == 0.8
    fast = load_suite("autoattack-fast")
    assert [a.id for a in fast.attacks] == ["apgd-ce", "apgd_t"] and fast.cascade
    quick = load_suite("quick")
    assert [(a.id, a.config.steps if a.name == "pgd" else None) for a in quick.attacks] == [("fgsm", None),
                                                                                            ("pgd-10", 10)]
    transfer = load_suite("transfer")  # the transfer papers' setting: eps 16, 10 steps of eps/10, full runs
    assert [(a.id, a.name) for a in transfer.attacks] == [("mi_fgsm", "mi_fgsm"), ("di_fgsm", "di_fgsm"),
                                                          ("ti_fgsm", "ti_fgsm"), ("di-ti-mi", "mi_fgsm")]
    assert all(a.eps == (16.0,) and a.config.steps == 10 and a.config.step_size is None for a in transfer.attacks)
    combo = transfer.attacks[3].config
    assert (combo.decay, combo.diversity, combo.kernel, combo.samples) == (1.0, 0.5, "auto", 0)
    assert not (transfer.cascade or transfer.early_stop)
    assert load_suite("paper") == load_suite()
    assert "4/255" in (DEFAULT_SUITE.parent / "suites" / "autoattack.yaml").read_text()  # how to use ImageNet's eps


def test_a_built_in_name_wins_and_a_file_needs_a_suffix_or_slash(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "quick").write_text("eps: [1]\nattacks:\n  - name: fgsm\n")
    assert load_suite("quick").source == "quick (built-in)"
    assert load_suite("./quick").attacks[0].eps == (1.0,)
    with pytest.raises(RobenchError) as e:
        load_suite("qiuck")
    assert str(e.value) == ("no suite 'qiuck': not a built-in and no such file; did you mean quick? "
                            "built-ins: paper, autoattack, autoattack-fast, autoattack-malt, autoattack-l2, quick, "
                            "transfer (robench suites), or a YAML file")
    with pytest.raises(RobenchError, match="^attack suite file not found: ./nosuch$"):
        load_suite("./nosuch")


@pytest.mark.parametrize(("text", "message"), [
    ("cascade: always\neps: [8]\nattacks:\n  - name: fgsm\n",
     "s.yaml line 1: 'cascade' must be true or false, got 'always'"),
    ("eps: [8]\nearly_stop: 1\nattacks:\n  - name: fgsm\n", "s.yaml line 2: 'early_stop' must be true or false, got 1"),
    ("eps: [8]\nattacks:\n  - name: fgsm\n    id: worst\n",
     "s.yaml line 4: attack id 'worst' is reserved for the per-sample worst case; give the entry another 'id:'"),
])
def test_suite_flags_and_reserved_ids_are_checked(text: str, message: str) -> None:
    with pytest.raises(RobenchError) as e:
        parse_suite(text, "s.yaml")
    assert str(e.value) == message


def test_targeted_attacks_need_three_classes_and_the_error_names_the_line() -> None:
    suite = parse_suite("eps: [8]\nattacks:\n  - name: apgd\n  - name: fab_t\n    targets: 2\n", "s.yaml")
    suite.check_classes(3, "digits")
    with pytest.raises(RobenchError) as e:
        suite.check_classes(2, "pairs")
    assert str(e.value) == ("s.yaml line 4: attack 'fab_t' needs at least 3 classes, but pairs has 2; "
                            "remove it or use 'apgd' (untargeted, cross-entropy)")
    aa = load_suite("autoattack")
    aa.check_classes(4, "four")
    with pytest.raises(RobenchError) as e:
        aa.check_classes(3, "three")
    assert str(e.value) == ("autoattack (built-in) line 15: attack 'apgd_t' needs at least 4 classes, but three has 3; "
                            "leave it out with attack (keeping the others), or copy the suite into a file and "
                            "remove it or use 'apgd' (untargeted, cross-entropy)")
    dlr = parse_suite("eps: [8]\nattacks:\n  - name: apgd\n    id: dlr\n    loss: dlr\n", "d.yaml")
    with pytest.raises(RobenchError) as e:
        dlr.check_classes(2, "pairs")
    assert str(e.value) == ("d.yaml line 3: attack 'dlr' (apgd) needs at least 3 classes, but pairs has 2; "
                            "use 'loss: ce'")


def test_override_keeps_the_suite_options() -> None:
    suite = override(load_suite("autoattack"), ("apgd-ce", "square"), (4.0,))
    assert suite.cascade and [a.id for a in suite.attacks] == ["apgd-ce", "square"]
    assert all(a.eps == (4.0,) for a in suite.attacks)
    assert "robust after this stage" in suite.semantics() and "first misclassified iterate" in suite.semantics()


NOT_FINITE = "is not a finite number; expected a number such as 0.5 (.nan, .inf and numbers beyond 1.8e308 are refused)"


@pytest.mark.parametrize(("entry", "message"), [
    ("  - name: fab_t\n    targets: 0\n", "s.yaml line 4: 'targets' must be at least 1, got 0 for attack 'fab_t'"),
    ("  - name: apgd\n    rho: 2\n", "s.yaml line 4: 'rho' must be in (0, 1], got 2 for attack 'apgd'"),
    ("  - name: apgd_t\n    steps: 0\n", "s.yaml line 4: 'steps' must be at least 1, got 0 for attack 'apgd_t'"),
    ("  - name: square\n    p_init: 1.5\n", "s.yaml line 4: 'p_init' must be in (0, 1], got 1.5 for attack 'square'"),
    ("  - name: apgd\n    loss: hinge\n", "s.yaml line 4: 'loss' of attack 'apgd' must be ce | dlr, got 'hinge'"),
    # settings that measure nothing: no steps, no step, NaN or inf (NaN passes every comparison)
    ("  - name: pgd\n    steps: 0\n", "s.yaml line 4: 'steps' must be at least 1, got 0 for attack 'pgd'"),
    ("  - name: bim\n    steps: 0\n", "s.yaml line 4: 'steps' must be at least 1, got 0 for attack 'bim'"),
    ("  - name: iter_ll\n    steps: 0\n", "s.yaml line 4: 'steps' must be at least 1, got 0 for attack 'iter_ll'"),
    ("  - name: fab_t\n    restarts: 0\n", "s.yaml line 4: 'restarts' must be at least 1, got 0 for attack 'fab_t'"),
    ("  - name: square\n    queries: 0\n", "s.yaml line 4: 'queries' must be at least 1, got 0 for attack 'square'"),
    ("  - name: pgd\n    steps: 9223372036854775807\n",
     "s.yaml line 4: 'steps' must be at most 10,000,000, got 9223372036854775807 for attack 'pgd'"),
    ("  - name: square\n    queries: 10000001\n",
     "s.yaml line 4: 'queries' must be at most 10,000,000, got 10000001 for attack 'square'"),
    ("  - name: bim\n    step_size: 0\n", "s.yaml line 4: 'step_size' must be > 0, got 0 for attack 'bim'"),
    ("  - name: pgd\n    step_size: 0.0\n", "s.yaml line 4: 'step_size' must be > 0, got 0.0 for attack 'pgd'"),
    # NaN and inf are refused by the YAML reader itself, for every key of every file (the configs refuse them too)
    ("  - name: iter_ll\n    step_size: .nan\n", f"s.yaml line 4: 'step_size': .nan {NOT_FINITE}"),
    ("  - name: pgd\n    step_size: .inf\n", f"s.yaml line 4: 'step_size': .inf {NOT_FINITE}"),
    ("  - name: apgd\n    rho: .nan\n", f"s.yaml line 4: 'rho': .nan {NOT_FINITE}"),
    ("  - name: fab_t\n    eta: .inf\n", f"s.yaml line 4: 'eta': .inf {NOT_FINITE}"),
])
def test_attack_options_out_of_range_name_the_line(entry: str, message: str) -> None:
    with pytest.raises(RobenchError) as e:
        parse_suite(f"eps: [8]\nattacks:\n{entry}", "s.yaml")
    assert str(e.value) == message


@pytest.mark.parametrize(("config", "field"), [(lambda: PgdConfig(steps=0), "steps"),
                                               (lambda: BimConfig(steps=0), "steps"),
                                               (lambda: IterLLConfig(step_size=math.nan), "step_size"),
                                               (lambda: PgdConfig(step_size=-1.0), "step_size")])
def test_attack_configs_refuse_settings_that_measure_nothing(config, field: str) -> None:
    with pytest.raises(FieldError) as e:  # the library's own check, not only the suite reader's
        config()
    assert e.value.field == field


def test_a_suite_that_measures_nothing_is_refused_before_any_work(tmp_path: Path) -> None:
    from click.testing import CliRunner
    from results_docs import one_error_line

    from robench.cli.main import main

    (tmp_path / "s.yaml").write_text("eps: [8]\nattacks:\n  - name: pgd\n    steps: 0\n")
    out = tmp_path / "r.json"
    result = CliRunner().invoke(main, ["eval", "zoo:resnet-base", "--limit", "4", "--attacks", str(tmp_path / "s.yaml"),
                                       "-q", "--out", str(out)])
    one_error_line(result, 2, "s.yaml line 4: 'steps' must be at least 1, got 0 for attack 'pgd'")
    assert not out.exists()


def test_the_unit_trap_in_yaml(tmp_path: Path) -> None:
    """attacks.yaml and gates.yaml read eps with the same rule, naming the file and line."""
    from robench.gate.rules import load_rules

    (tmp_path / "s.yaml").write_text("eps: [2, 0.3]\nattacks:\n  - name: fgsm\n")
    with pytest.raises(RobenchError, match=r"s\.yaml line 1: 'eps': eps 0\.3 is in 1/255 units"):
        load_suite(str(tmp_path / "s.yaml"))
    (tmp_path / "px.yaml").write_text("eps: [2, 0.3px, '16/255']\nattacks:\n  - name: fgsm\n")
    assert load_suite(str(tmp_path / "px.yaml")).attacks[0].eps == (2.0, 76.5, 16.0)
    (tmp_path / "px.yaml").write_text("eps: [2, 0.3px, '76.5/255']\nattacks:\n  - name: fgsm\n")
    with pytest.raises(RobenchError, match=r"px\.yaml line 1: 'eps': eps 76\.5 is given twice \(0\.3px and 76\.5/255"):
        load_suite(str(tmp_path / "px.yaml"))
    (tmp_path / "g.yaml").write_text("rules:\n  - {attack: fgsm, eps: 0.031, min: 0.5}\n")
    with pytest.raises(RobenchError, match=r"g\.yaml line 2: 'eps': eps 0\.031 is in 1/255 units"):
        load_rules(tmp_path / "g.yaml")


BIG = "9" * 5000  # Python refuses to read more than 4300 digits: once a ValueError and exit 3


@pytest.mark.parametrize(("entry", "message"), [
    ("    step_size: .nan\n", "s.yaml line 4: 'step_size': .nan is not a finite number; expected a number"),
    ("    step_size: -.inf\n", "s.yaml line 4: 'step_size': -.inf is not a finite number"),
    ("    step_size: 1.0e+999\n", "s.yaml line 4: 'step_size': 1.0e+999 is not a finite number"),
    (f"    steps: {BIG}\n", "s.yaml line 4: 'steps': 99999999999999999999... (5000 characters) is too large; "
                             "expected a whole number of at most 2**63 - 1"),
    ("    steps: 9223372036854775808\n", "'steps': 9223372036854775808 is too large"),
    (f"    eps: [8, {BIG}]\n", "s.yaml line 4: 'eps': 99999999999999999999... (5000 characters) is too large"),
    ("    eps: [8, .nan]\n", "s.yaml line 4: 'eps': .nan is not a finite number"),
])
def test_numbers_a_suite_cannot_use_name_the_key_and_line(entry: str, message: str) -> None:
    with pytest.raises(RobenchError) as e:
        parse_suite("eps: [8]\nattacks:\n  - name: pgd\n" + entry, "s.yaml")
    assert message in str(e.value)
    assert "invalid YAML" not in str(e.value)


def test_an_overlong_eps_on_the_command_line_is_shown_shortened() -> None:
    with pytest.raises(RobenchError) as e:
        parse_eps_list("1" + "0" * 5000)
    assert str(e.value) == "eps: eps '10000000000000000000000000000... (5001 characters) is not a number; use " \
                           "1/255 units like 8, a fraction like 8/255, or pixels like 0.03px"


def test_a_number_outside_any_mapping_is_refused_too() -> None:
    with pytest.raises(RobenchError, match=r"s\.yaml line 1: 99999999999999999999\.\.\. \(5000 characters\) is too"):
        parse_suite(f"- {BIG}\n", "s.yaml")
    with pytest.raises(RobenchError, match=r"s\.yaml line 1: \.inf is not a finite number"):
        parse_suite("[.inf]\n", "s.yaml")


BILLION_LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(9)
) + "eps: [8]\nattacks: [{name: fgsm}]\n"


def test_yaml_aliases_are_refused() -> None:
    """An alias repeats a node by reference: nine lines of them stand for 9**10 strings (billion laughs)."""
    with pytest.raises(RobenchError, match=r"s\.yaml line 2: alias '\*a' refused: robench's YAML files take no "
                                           r"anchors or aliases; write the value out"):
        parse_suite(BILLION_LAUGHS, "s.yaml")
    with pytest.raises(RobenchError, match=r"line 4: alias '\*e' refused"):
        parse_suite("eps: &e [8]\nattacks:\n  - name: pgd\n    eps: *e\n", "s.yaml")


def test_an_overlong_yaml_text_is_refused_unread() -> None:
    with pytest.raises(RobenchError, match=r"s\.yaml: 1048577 characters is too long for a suite or rule file"):
        parse_suite("#" * (2**20 + 1), "s.yaml")


@pytest.mark.slow
def test_a_billion_laughs_suite_exits_2_at_once_in_little_memory(tmp_path: Path) -> None:
    from results_docs import PEAK_MB, run_peak

    (tmp_path / "s.yaml").write_text(BILLION_LAUGHS)
    code, lines, peak_mb = run_peak("eval", "test_resnet", "--attacks", tmp_path / "s.yaml", "--limit", "4", "-q",
                                    timeout=60)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("robench: error: ") and "alias '*a' refused" in lines[0]
    assert peak_mb < PEAK_MB


def test_a_huge_number_in_a_suite_exits_2_before_any_work(tmp_path: Path) -> None:
    from click.testing import CliRunner
    from results_docs import one_error_line

    from robench.cli.main import main

    (tmp_path / "s.yaml").write_text(f"eps: [8]\nattacks:\n  - name: pgd\n    steps: {BIG}\n")
    out = tmp_path / "r.json"
    result = CliRunner().invoke(main, ["eval", "zoo:resnet-base", "--limit", "4", "--attacks", str(tmp_path / "s.yaml"),
                                       "-q", "--out", str(out)])
    one_error_line(result, 2, "s.yaml line 4: 'steps': 99999999999999999999... (5000 characters) is too large")
    assert not out.exists()


@pytest.mark.parametrize(("text", "message"), [
    ("8,,16,", "eps: '8,,16,' has an empty item; give eps separated by single commas, e.g. 2,4,8"),
    ("8,16,,", "eps: '8,16,,' has an empty item"),
    (",8", "eps: ',8' has an empty item"),
    ("1e400", "eps: eps 1e400 is out of range; it must lie in [0, 255] (1/255 units)"),
])
def test_an_eps_list_with_a_lost_value_or_an_overflow_is_refused(text: str, message: str) -> None:
    """`--eps 8,,16,` ran at 8 and 16 without a word (one trailing comma stays fine); 1e400 was "not a number"."""
    with pytest.raises(RobenchError) as e:
        parse_eps_list(text)
    assert str(e.value).startswith(message)


# ---------------------------------------------------------------- the L2 threat model

MIXED = """attacks:
  - name: pgd
    norm: linf
    eps: [8]
  - name: pgd
    id: pgd-l2
    norm: l2
    eps: [0.5, 1]
"""


def test_autoattack_l2_is_autoattack_standard_under_l2_at_half() -> None:
    aa, l2 = load_suite("autoattack"), load_suite("autoattack-l2")
    assert [(a.id, a.norm, a.eps) for a in l2.attacks] == [(a.id, "l2", (0.5,)) for a in aa.attacks]
    strip = {"norm"}  # every other setting is AutoAttack standard's, as in the L-inf suite
    for a, b in zip(aa.attacks, l2.attacks, strict=True):
        assert {k: v for k, v in a.describe().items() if k not in strip | {"eps"}} == \
               {k: v for k, v in b.describe().items() if k not in strip | {"eps"}}
    assert l2.cascade and l2.early_stop and not l2.shortcuts()  # no survivor check against itself
    assert "autoattack-l2" in [name for name, _, _ in built_in_suites()]


def test_an_l2_suite_reads_eps_as_written() -> None:
    suite = parse_suite("eps: [0.25, 0.5]\nattacks:\n  - name: pgd\n    norm: l2\n", "s.yaml")
    assert suite.attacks[0].eps == (0.25, 0.5) and suite.attacks[0].norm == "l2"
    assert suite.norms() == {"pgd": "l2", "worst": "linf", "worst-l2": "l2"}


@pytest.mark.parametrize(("eps", "why"), [
    ("8/255", "eps '8/255' is not a plain number; under norm l2 eps is the L2 norm of the whole perturbation in "
              "[0, 1] pixels, written as a plain number such as 0.5 (no /255)"),
    ("0.5px", "eps '0.5px' is not a plain number"),
    ("-1", "eps -1 is out of range"),
    ("[0.5, 5e-1]", "eps 0.5 is given twice (0.5 and 5e-1 are both 0.5 as L2 norms)"),
])
def test_an_l2_suite_refuses_converted_eps(eps: str, why: str) -> None:
    with pytest.raises(RobenchError, match="^s.yaml line 1: 'eps': " + re.escape(why)):
        parse_suite(f"eps: {eps}\nattacks:\n  - name: pgd\n    norm: l2\n", "s.yaml")


def test_a_suite_mixing_norms_must_say_each_entrys_norm() -> None:
    implicit = MIXED.replace("    norm: linf\n", "")
    with pytest.raises(RobenchError) as e:
        parse_suite(implicit, "m.yaml")
    assert str(e.value) == ("m.yaml line 2: this suite mixes norms (linf and l2), so each entry says which it uses; "
                            "add 'norm: linf' to this one (or move the L2 attacks to a suite of their own)")
    with pytest.raises(RobenchError, match=r"^m.yaml line 1: a top-level 'eps' in a suite that mixes norms"):
        parse_suite("eps: [8]\n" + MIXED, "m.yaml")
    suite = parse_suite(MIXED, "m.yaml")
    assert [(a.id, a.norm, a.eps) for a in suite.attacks] == [("pgd", "linf", (8.0,)), ("pgd-l2", "l2", (0.5, 1.0))]


def test_eps_override_under_l2_and_refused_on_a_mixed_suite() -> None:
    l2 = load_suite("autoattack-l2")
    assert {a.eps for a in override(l2, (), ("0.25", 1)).attacks} == {(0.25, 1.0)}
    with pytest.raises(FieldError, match="is not a plain number") as e:
        override(l2, (), ("8/255",))
    assert e.value.field == "eps"
    mixed = parse_suite(MIXED, "m.yaml")
    with pytest.raises(FieldError, match="these attacks mix norms: L-inf eps are in 1/255 units and L2 eps are the "
                                         "L2 norm of the whole perturbation in") as e:
        override(mixed, (), ("8",))
    assert e.value.field == "eps"
    assert override(mixed, ("pgd",), ("4",)).attacks[0].eps == (4.0,)  # one norm left: its unit


def test_an_attack_picked_from_an_l2_suite_runs_in_its_ball() -> None:
    l2 = load_suite("autoattack-l2")
    pgd = override(l2, ("pgd",)).attacks[0]
    assert (pgd.norm, pgd.eps) == ("l2", (0.5,))
    with pytest.raises(FieldError, match="step_ll has no L2 version") as e:
        override(l2, ("step_ll",))
    assert e.value.field == "attack"


def test_an_l2_eps_above_the_data_diameter_is_refused() -> None:
    suite = parse_suite(MIXED.replace("[0.5, 1]", "[0.5, 9]"), "m.yaml")
    suite.check_l2_eps(3 * 32 * 32, "cifar")  # 9 < sqrt(3072) = 55.4
    with pytest.raises(RobenchError) as e:
        suite.check_l2_eps(1 * 8 * 8, "digits (1x8x8)")  # the L-inf eps 8 is not L2: no bound on it
    assert str(e.value).startswith("m.yaml line 5: L2 eps 9 of 'pgd-l2' is above 8, the largest L2 distance between "
                                   "two images of digits (1x8x8);")


def test_worst_l2_is_reserved() -> None:
    with pytest.raises(RobenchError, match="attack id 'worst-l2' is reserved for the per-sample worst case"):
        parse_suite("eps: [8]\nattacks:\n  - name: fgsm\n    id: worst-l2\n", "s.yaml")

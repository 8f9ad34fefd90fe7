"""hyporay's sweeps and searches as Python objects: what ``sweeps/*.py`` run from the command line and what
``hyporay.engine.run`` runs from a notebook (``SWEEPS`` by name). Light: nothing heavy is imported here."""
from __future__ import annotations

from hyporay.delusive_table import DEFENCES as DELUSIVE_DEFENCES
from hyporay.delusive_table import SETS as DELUSIVE_SETS
from hyporay.engine.definition import Axis, SweepDefinition
from hyporay.engine.optuna.definition import BUDGET, PARETO, SearchDefinition

VARIANTS = ["naive", "noise", "mislabeling", "poisoning", "quality"]  # the training sets of Tables 1-2


# the axes' one vocabulary of flags (the searches use the same words)
def trainers(values: list[str] | None, help_: str = "trainers to compare") -> Axis:
    return Axis("train.trainer", values, "--trainers", str, help_)


def lambdas(help_: str = "lambda grid") -> Axis:
    return Axis("train.lam", None, "--lambdas", float, help_)


def models(help_: str = "architectures") -> Axis:
    return Axis("model.name", None, "--models", str, help_)


def variants(help_: str) -> Axis:
    return Axis("variant.name", VARIANTS, "--variants", str, help_)


THRM_LAMBDA = SweepDefinition(
    name="thrm_lambda",
    description="TRADES vs THRM over lambda: the natural-vs-hypocritical trade-off frontier (the paper's Fig. 4).",
    axes=[trainers(None), lambdas()],
)

DEFENDER_EPS = SweepDefinition(
    name="defender_eps",
    description="PGD-AT, TRADES and THRM over the training eps: how the defender's budget moves the "
                "natural-vs-hypocritical frontier.",
    axes=[
        trainers(["pgd_at", "trades", "thrm"]),
        Axis("train.attack.eps", None, "--eps", float, "training eps grid (pixel units, e.g. 0.0314 = 8/255)"),
    ],
    # lambda of TRADES/THRM (one value: points are labelled by eps); step eps/4 for every eps (paper: 2/255)
    defaults={"train.lam": 6, "train.attack.step_size": None},
    label_key="train.attack.eps",
)

ARCHITECTURES = SweepDefinition(
    name="architectures",
    description="Natural training vs THRM across architectures: where each model sits on the "
                "natural-vs-hypocritical plane.",
    axes=[models(), trainers(["natural", "thrm"], "trainers")],
    defaults={"train.lam": 6},
    label_key="model.name",
)

ATTACK_STEPS = SweepDefinition(
    name="attack_steps",
    description="Is the eval attack converged? Accuracy under attack vs PGD steps and restarts, for each trainer.",
    axes=[trainers(["natural", "pgd_at", "trades", "thrm"], "trainers")],
    defaults={"train.lam": 6, "eval.steps_grid": [1, 10, 100, 1000], "eval.restarts_grid": [1, 5, 10]},
    frontier=False,
    after="hyporay.analysis.reports:convergence_hook",
)

SUBSTANDARD = SweepDefinition(
    name="substandard",
    description="Substandard models (the paper's Tables 1-2): natural training on "
                "Naive/Noise/Mislabeling/Poisoning/Quality sets.",
    axes=[variants("training-set variants"), models()],
    defaults={"train.trainer": "natural"},
    frontier=False,
    after="hyporay.analysis.reports:substandard_hook",
)

REPRODUCE = SweepDefinition(
    name="reproduce",
    description="Reproduce the paper's tables, figures and five claims in one sweep, and write a report beside its "
                "numbers.",
    axes=[lambdas("λ grid of Fig. 4 (TRADES and THRM)"), models("architectures of Tables 1-2"),
          variants("training sets of Tables 1-2")],
    frontier=False,   # the report draws Fig. 4 from its own part of the trials
    grid="hyporay.paper.grid:grid",
    options="hyporay.paper.grid:options",
    seeds={"local": 3},
    after="hyporay.paper.report:report",
)

DELUSIVE = SweepDefinition(
    name="delusive",
    description="001's Table 2: clean test accuracy of seven defences trained on the clean set and on 001's "
                "delusive sets P1-P5.",
    axes=[
        Axis("variant.method", list(DELUSIVE_SETS), "--sets", str, "training sets: clean and 001's delusive P1-P5"),
        Axis("train.trainer", list(DELUSIVE_DEFENCES), "--trainers", str, "defences"),
    ],
    frontier=False,
    grid="hyporay.delusive_table:grid",
    seeds={"local": 3},
    after="hyporay.delusive_table:report",
)

SWEEPS: dict[str, SweepDefinition | SearchDefinition] = {
    d.name: d for d in (THRM_LAMBDA, DEFENDER_EPS, ARCHITECTURES, ATTACK_STEPS, SUBSTANDARD, REPRODUCE, DELUSIVE,
                        BUDGET, PARETO)}

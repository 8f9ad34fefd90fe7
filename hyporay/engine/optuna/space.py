"""An Optuna search's space and flags: the searched trial fields (``Param``) from ``--eps-range``, ``--lam-range``,
``--steps-range`` and ``--trainers``, the profile's defaults filling the rest, and the full trial config of one set of
Optuna parameters."""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any

from hyporay.engine.flags import count, fraction, non_negative, parse_list
from hyporay.engine.optuna.definition import PRUNERS, SAMPLERS, SEARCH_DEFAULTS, SearchDefinition

# --- search space ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Param:
    """One searched trial field: ``name`` is the Optuna parameter (plots, dashboard), ``key`` the dotted field."""

    name: str
    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple | None = None

    def distribution(self):
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.choices is not None:
            return CategoricalDistribution(list(self.choices))
        if self.integer:
            return IntDistribution(int(self.low), int(self.high), log=self.log)
        return FloatDistribution(float(self.low), float(self.high), log=self.log)

    def describe(self) -> str:
        if self.choices is not None:
            return f"{self.name} in {{{', '.join(map(str, self.choices))}}}"
        return f"{self.name} in [{self.low:g}, {self.high:g}] {'log' if self.log else 'linear'}"

    def ends(self) -> tuple:
        return self.choices if self.choices is not None else (self.low, self.high)


def parse_range(raw: str, flag: str, *, log: bool, integer: bool = False, minimum: float = 0.0,
                scale_flag: str | None = None) -> tuple[float, float]:
    """``"LOW,HIGH"`` -> (low, high), checked: numbers, >= minimum, low <= high, low > 0 on a log scale."""
    from hyporay.config import ConfigError

    parts = [p.strip() for p in str(raw).split(",")]
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"{flag}: expected LOW,HIGH (e.g. {'2,20' if integer else '0.01,0.3'}), got {raw!r}")
    vals = []
    for p in parts:
        try:
            v = float(p)
        except ValueError:
            raise ConfigError(f"{flag}: cannot read {p!r} as a number") from None
        if not math.isfinite(v):
            raise ConfigError(f"{flag}: must be finite, got {p}")
        if integer and not v.is_integer():
            raise ConfigError(f"{flag}: must be whole numbers, got {p}")
        vals.append(int(v) if integer else v)
    low, high = vals
    if low < minimum:
        raise ConfigError(f"{flag}: must be >= {minimum:g}, got {low:g}")
    if low > high:
        raise ConfigError(f"{flag}: low {low:g} > high {high:g}")
    if log and low <= 0:
        hint = f"; use {scale_flag} linear" if scale_flag else ""
        raise ConfigError(f"{flag}: a log scale needs low > 0, got {low:g}{hint}")
    return low, high


def _trainers(raw: str, single: bool) -> tuple[str, ...]:
    from hyporay.config import ConfigError
    from hyporay.trainers import LOSSES

    names = tuple(t.strip() for t in raw.split(",") if t.strip())
    bad = [t for t in names if t not in LOSSES]
    if bad or not names:
        raise ConfigError(f"--trainers: unknown {bad[0]!r}; known: {', '.join(sorted(LOSSES))}" if bad
                          else "--trainers: give at least one")
    if single and len(names) > 1:
        raise ConfigError(f"--trainers: the budget search trains one trainer, got {', '.join(names)}")
    return names


def fixed_lambda(args) -> float | None:
    """The one λ of ``--lambdas`` (a search takes a fixed λ, or searches ``--lam-range``)."""
    from hyporay.config import ConfigError

    if args.lambdas is None:
        return None
    vals = parse_list(args.lambdas, float, "--lambdas")
    if len(vals) != 1:
        raise ConfigError(f"--lambdas: a search takes one fixed lambda (or --lam-range), got {len(vals)}")
    if vals[0] < 0 or not math.isfinite(vals[0]):
        raise ConfigError(f"--lambdas: must be >= 0, got {vals[0]:g}")
    return vals[0]


def build_space(defn: SearchDefinition, args, defaults: dict) -> list[Param]:
    """The search space from the flags, the profile's defaults filling what the flags leave open."""
    from hyporay.config import ConfigError

    space = [_ranged(args, "eps", "train.attack.eps", args.eps_range or ",".join(map(str, defaults["eps"])))]
    if defn.multi_objective:
        trainers = _trainers(args.trainers, False) if args.trainers else tuple(defaults["trainers"])
        space.insert(0, Param("trainer", "train.trainer", choices=trainers))
    lam = fixed_lambda(args)
    lam_range = args.lam_range
    if lam_range is None and defn.multi_objective and lam is None:
        lam_range = ",".join(str(v) for v in defaults["lam_range"])
    if lam_range is not None:
        if lam is not None:
            raise ConfigError("--lambdas and --lam-range: give one (a fixed lambda, or a range to search)")
        space.append(_ranged(args, "lam", "train.lam", lam_range))
    if args.steps_range is not None:
        space.append(_ranged(args, "steps", "train.attack.steps", args.steps_range, integer=True, minimum=1))
    return space


def _ranged(args, name: str, key: str, raw: str, *, integer: bool = False, minimum: float = 0.0) -> Param:
    """The searched field ``key`` from ``--NAME-range`` (``raw``) sampled on ``--NAME-scale``."""
    log = getattr(args, f"{name}_scale") == "log"
    low, high = parse_range(raw, f"--{name}-range", log=log, integer=integer, minimum=minimum,
                            scale_flag=f"--{name}-scale")
    return Param(name, key, low, high, log=log, integer=integer)


def search_defaults(profile: str, prof: dict) -> dict[str, Any]:
    if profile in SEARCH_DEFAULTS:
        return dict(SEARCH_DEFAULTS[profile])
    out = dict(SEARCH_DEFAULTS["local"])
    eps = float(prof.get("trial", {}).get("train", {}).get("attack", {}).get("eps", 0.1) or 0.1)
    out["eps"] = (eps / 8, min(1.0, eps * 2))
    return out


def base_overrides(defn: SearchDefinition, args, space: list[Param], defaults: dict) -> dict:
    """The search's own trial fields (its defaults, the trainer, a fixed λ) as a nested dict."""
    from hyporay.dotted import put

    over: dict = {}
    for k, v in defn.defaults.items():
        put(over, k, v)
    if not defn.multi_objective and args.trainers:
        put(over, "train.trainer", _trainers(args.trainers, True)[0])
    if not any(p.key == "train.lam" for p in space):
        lam = fixed_lambda(args)
        put(over, "train.lam", defaults["lam"] if lam is None else lam)
    return over


def trial_config(base: dict, space: list[Param], params: dict[str, Any]) -> dict:
    """The full trial config (validated) of one set of Optuna parameters."""
    from hyporay.config import load_config, merge
    from hyporay.dotted import put

    over: dict = {}
    for p in space:
        if p.name in params:
            put(over, p.key, params[p.name])
    return load_config(merge(base, over)).model_dump()


# --- flags ----------------------------------------------------------------------------------------------

def _range_flags(p: argparse.ArgumentParser, name: str, help_range: str, what: str, scale: str = "log") -> None:
    """``--NAME-range LOW,HIGH`` and ``--NAME-scale {log,linear}`` of one searched field (see ``_ranged``)."""
    p.add_argument(f"--{name}-range", metavar="LOW,HIGH", help=help_range)
    p.add_argument(f"--{name}-scale", choices=("log", "linear"), default=scale,
                   help=f"how {what} sampled")


def _counts(p: argparse.ArgumentParser, flags: dict[str, tuple[int, str]]) -> None:
    """Whole-number flags without a default: {flag: (minimum, help)}."""
    for flag, (minimum, text) in flags.items():
        p.add_argument(flag, type=count(minimum), help=text)


def add_search_flags(p: argparse.ArgumentParser, defn: SearchDefinition) -> None:
    """The search's own flags, in the sweeps' vocabulary (--trainers, --lambdas); old names kept as aliases."""
    p.add_argument("--study-name", help="Optuna study; an existing one is continued (default "
                                        f"{defn.name}-<profile>-<timestamp>: a new study)")
    p.add_argument("--resume", nargs="?", const="latest", metavar="STUDY",
                   help="continue a study (the latest one of this search in --study-storage, or STUDY): its "
                        "interrupted trials end FAIL, then --n-trials more run")
    p.add_argument("--study-storage", "--storage", dest="storage",
                   help="Optuna storage: a JournalStorage file (default ./optuna.journal), sqlite:///PATH, "
                        "postgresql://..., mysql://..., or redis://HOST:PORT; only the driver opens it")
    _counts(p, {"--n-trials": (1, "trials to run now (added to a continued study); default: the profile's (local 16, "
                                  "paper 32)"),
                "--parallel": (1, "trials running at once (default: as many as the cluster fits)")})
    p.add_argument("--sampler-seed", "--seed", dest="seed", type=int, default=0,
                   help="sampler seed (a continued study adds its number of trials)")
    p.add_argument("--trainers", "--trainer", dest="trainers",
                   help="trainers searched, comma-separated (default trades,thrm)" if defn.multi_objective
                   else "the defender's trainer (default thrm)")
    _range_flags(p, "eps", "training eps range, pixel units of [0,1] inputs (default: local 0.005,0.4; paper "
                           "1/255,16/255)", "eps is")
    p.add_argument("--lambdas", "--lam", dest="lambdas", metavar="LAMBDA",
                   help="a fixed lambda (default 6)" + ("; give this or --lam-range" if defn.multi_objective else ""))
    lam_default = " (default: local 0.5,80; paper 1,100)" if defn.multi_objective else " (default: a fixed --lambdas)"
    _range_flags(p, "lam", "search lambda in this range" + lam_default, "lambda is")
    _range_flags(p, "steps", "also search the training attack's PGD steps", "steps are", scale="linear")
    if defn.multi_objective:
        p.add_argument("--population-size", type=count(2), help="NSGA-II population (default: local 8, paper 16)")
        return
    p.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="Optuna sampler (seeded)")
    p.add_argument("--sampler-startup", type=count(0), help="TPE's random trials before it models (default: "
                                                            "local 5, paper 8)")
    p.add_argument("--max-natural-risk", type=fraction, help="natural-risk ceiling of the objective: trials above "
                                                             "it are penalised (default: local 0.15, paper 0.20)")
    p.add_argument("--penalty", type=non_negative, default=10.0,
                   help="objective = hypocritical_risk + PENALTY * max(0, natural_risk - ceiling)")
    p.add_argument("--pruner", choices=PRUNERS, default="median",
                   help="Optuna pruner, asked after every evaluated epoch; halving = successive halving (resources "
                        "in epochs)")
    _counts(p, {"--pruner-startup": (0, "median/percentile: completed trials before pruning (default: local 3, "
                                        "paper 4)"),
                "--pruner-warmup": (0, "median/percentile: no pruning before this epoch (default: local 4, paper 20)")})
    p.add_argument("--percentile", type=float, default=25.0, help="percentile pruner: keep the best P%%")
    p.add_argument("--reduction-factor", type=count(2), default=3, help="successive halving / hyperband")

"""The certified bracket of R_hyp(D-) on the Fashion-MNIST models, as a table: [found by the attack, certified upper
bound] for natural training, TRADES and THRM (the reproduction's MLPs, CROWN-IBP bounds, means over seeds, from
docs/results/fashion/frontier.csv) and for the l_inf-distance net (hyporay train runs of
sweeps/configs/fashion_linfdist.yaml, its margin certificate), with where the upper bound says something and where
it is vacuous. Writes bracket.md and bracket.csv beside the report.

    .venv/bin/hyporay train sweeps/configs/fashion_linfdist.yaml --set train.trainer=thrm \\
        --set name=fashion-linfdist-thrm --out runs/fashion-linfdist-thrm          # and trades
    .venv/bin/python tools/fashion_bracket.py --results docs/results/fashion \\
        runs/fashion-linfdist-thrm runs/fashion-linfdist-trades

An upper bound is vacuous when it is 1 (no misclassified test point certified: the attack's lower bound is all we
know), informative when below 1; its distance to the attack's number is what an exact evaluation could still move.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install too

from hyporay import provenance as P  # noqa: E402

VACUOUS = 0.9995   # an upper bound of 1.000 (to three decimals): nothing certified
NAMES = {"natural": "NT", "trades": "TRADES", "thrm": "THRM", "pgd_at": "PGD-AT"}


def verdict(attack: float, upper: float) -> str:
    if not math.isfinite(upper):
        return "not certified"
    if upper >= VACUOUS:
        return "vacuous (1: no misclassified point certified)"
    return f"informative: gap {upper - attack:.3f}"


CERTIFIERS = {"ibp": "IBP", "crown-ibp": "CROWN-IBP", "crown": "CROWN"}
REGULARISED = ("trades", "thrm")  # λ = 0 of either is natural training (one model, on both curves)


def frontier_rows(path: Path, certifier: str) -> list[dict]:
    rows, natural_seen = [], False
    with path.open() as f:
        for r in csv.DictReader(f):
            lam = float(r["lam"])
            natural = lam == 0 and r["trainer"] in REGULARISED
            if natural and natural_seen:  # natural training once, whichever curve lists it first
                continue
            natural_seen |= natural
            attack, upper = float(r["hypocritical_risk"]), float(r.get("hypocritical_risk_certified_upper") or "nan")
            rows.append({"model": "MLP 784-256-256-10",
                         "trainer": "NT" if natural else NAMES.get(r["trainer"], r["trainer"]),
                         "lam": lam, "seeds": int(r["n_seeds"]), "natural_risk": float(r["natural_risk"]),
                         "attack": attack, "upper": upper, "certifier": certifier,
                         "verdict": verdict(attack, upper), "source": f"{path.parent.name}/{path.name}"})
    return rows


def reproduction_setting(results: Path) -> tuple[str, str]:
    """(the reproduction's eval attack in one line, its certifier), from the plan it recorded (trials.json)."""
    from hyporay.attacks import AttackSpec

    plan = results / "trials.json"
    if not plan.is_file():
        return "the reproduction's eval attack (see its report)", "its eval.certify"
    base = json.loads(plan.read_text())["base"]
    spec = AttackSpec(**{k[len("eval.attack."):]: v for k, v in base.items() if k.startswith("eval.attack.")})
    return spec.describe(), CERTIFIERS.get(base.get("eval.certify"), str(base.get("eval.certify")))


def trial_row(run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text())
    from hyporay.config import load_config

    cfg = load_config(run / "config.yaml")
    prov = m.get("provenance", {})
    attack = float(m["hypocritical_risk"])
    upper = m.get("hypocritical_risk_certified_upper")
    upper = math.nan if upper is None else float(upper)
    kw = cfg.model.kwargs
    return {"attack_setting": cfg.eval.attack.describe(),
            "model": f"l_inf-dist net 784-{kw.get('width', '?')}x{kw.get('depth', '?')}-10",
            "trainer": NAMES.get(cfg.train.trainer, cfg.train.trainer), "lam": cfg.train.lam, "seeds": 1,
            "natural_risk": float(m["natural_risk"]), "attack": attack, "upper": upper,
            "certifier": f"its margin certificate ({cfg.eval.certify})", "verdict": verdict(attack, upper),
            "source": f"{run.name} ({P.describe(prov)}; {P.describe_machine(prov)})"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", type=Path, help="hyporay train output directories (metrics.json, config.yaml)")
    p.add_argument("--results", type=Path, default=Path("docs/results/fashion"),
                   help="the reproduction's report directory (reads frontier.csv, writes bracket.md/.csv)")
    a = p.parse_args(argv)
    front = a.results / "frontier.csv"
    if not front.is_file():
        p.error(f"--results: no frontier.csv in {a.results} (run sweeps/reproduce.py first)")
    for run in a.runs:
        if not (run / "metrics.json").is_file() or not (run / "config.yaml").is_file():
            p.error(f"{run}: no metrics.json and config.yaml (a finished hyporay train --out directory)")
    order = {"NT": 0, "PGD-AT": 1, "TRADES": 2, "THRM": 3}
    setting, certifier = reproduction_setting(a.results)
    rows = sorted(frontier_rows(front, certifier), key=lambda r: (order.get(r["trainer"], 9), r["lam"]))
    if not rows:
        p.error(f"--results: {front} lists no frontier point")
    runs = sorted((trial_row(r) for r in a.runs), key=lambda r: (order.get(r["trainer"], 9), r["lam"]))
    by_source = {"the MLP rows": setting} | {r["source"].split(" ")[0]: r.pop("attack_setting") for r in runs}
    settings = ({setting} if len(set(by_source.values())) == 1  # one threat model for every row
                else {f"{src}: {s}" for src, s in by_source.items()})
    rows += runs
    with (a.results / "bracket.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    md = ["# The certified bracket of R_hyp(D-) on Fashion-MNIST", "",
          f"R_hyp(D-) lies in [attack, certified]: the attack ({'; '.join(sorted(settings))}) finds concealable "
          "mistakes (a lower bound), the certifier bounds it from above at the same ε. Vacuous: the bound is 1, no "
          "misclassified test point could be certified. Built by `tools/fashion_bracket.py` from the reproduction's "
          "frontier.csv (MLP rows, means over its seeds) and the l_inf-dist runs named in the source column (one seed "
          "each); nothing here is written by hand.", "",
          "| model | trainer | λ | seeds | natural risk | R_hyp(D-) attack | certified upper | certifier | upper bound |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        upper = "n/a" if not math.isfinite(r["upper"]) else f"{r['upper']:.3f}"
        md.append(f"| {r['model']} | {r['trainer']} | {r['lam']:g} | {r['seeds']} | {r['natural_risk']:.3f} | "
                  f"{r['attack']:.3f} | {upper} | {r['certifier']} | {r['verdict']} |")
    informative = [r for r in rows if r["verdict"].startswith("informative")]
    vacuous = [r for r in rows if r["verdict"].startswith("vacuous")]
    md += ["", f"Informative in {len(informative)} of {len(rows)} rows "
           f"({', '.join(sorted({r['model'] for r in informative})) or 'none'}); vacuous in {len(vacuous)} "
           f"({', '.join(sorted({r['model'] for r in vacuous})) or 'none'}).", "",
           "Sources: " + "; ".join(sorted({r["source"] for r in rows})), ""]
    (a.results / "bracket.md").write_text("\n".join(md))
    print(f"wrote {a.results / 'bracket.md'} and {a.results / 'bracket.csv'} ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""001's Table 2 (Tao et al., "Better Safe Than Sorry"): the grid, the table and the verdict of ``sweeps/delusive.py``
(its definition: ``hyporay.sweeps.DELUSIVE``).

Clean test accuracy of seven defences trained on the clean set and on 001's delusive sets P1-P5: 001's layout
(rows = defence, columns = training set) with our mean ± std over seeds and 001's CIFAR-10 ResNet-18 number in
brackets, and a verdict on 001's claim that adversarial training recovers most of the accuracy the poisons take and
random noise does not. Light at import (the sweep's ``--help`` stays fast): analysis modules load when used.
"""
from __future__ import annotations

import math
from pathlib import Path

SETS = ("clean", "p1", "p2", "p3", "p4", "p5")
DEFENCES = ("natural", "randnoise", "pgd_at", "gairat", "fat", "trades", "thrm")
NAMES = {"natural": "ST", "randnoise": "RandNoise", "pgd_at": "PGD-AT", "gairat": "GAIRAT", "fat": "FAT",
         "trades": "TRADES", "thrm": "THRM"}
AT_FAMILY = ("pgd_at", "gairat", "fat")   # what 001 calls adversarial training and its variants
LAM = 6.0                                  # TRADES / THRM (official TRADES λ)
# 001 Table 2: natural accuracy (%), CIFAR-10, ResNet-18, l_inf eps 8/255 (columns Clean, L2C, P1-P5)
PAPER = {
    "natural": (94.62, 15.76, 15.70, 61.35, 9.40, 13.58, 10.12),
    "randnoise": (94.26, 17.10, 17.32, 63.36, 10.52, 14.37, 27.56),
    "pgd_at": (85.18, 82.84, 84.18, 86.74, 86.37, 83.18, 84.57),
    "gairat": (81.90, 79.96, 79.61, 82.68, 82.05, 82.81, 82.28),
    "fat": (87.43, 85.51, 86.05, 88.98, 84.39, 84.22, 87.78),
}
PAPER_COLUMNS = ("clean", "l2c", "p1", "p2", "p3", "p4", "p5")
RECOVERED = 0.5     # "most of the accuracy": a defence recovers more than half of what the poison took from ST
HURT_MIN = 0.01     # a poison "hurts" when ST loses more than 1 point and more than 2 standard errors (seeds)


def paper_value(trainer: str, training_set: str) -> float | None:
    row = PAPER.get(trainer)
    return None if row is None else row[PAPER_COLUMNS.index(training_set)]


def training_set(trial: dict) -> str:
    v = trial.get("variant", {})
    return "clean" if v.get("name", "quality") == "quality" else v.get("method", "p1")


def grid(base: dict, values: dict, seeds: list[int], profile: str) -> list[tuple[dict, dict]]:
    """(trial, tags): every training set x defence x seed, evaluated once after the last epoch."""
    from hyporay.config import load_config, merge

    epochs = load_config(base).train.epochs
    out = []
    for seed in seeds:
        for s in values["variant.method"]:
            variant = {"name": "quality"} if s == "clean" else {"name": "poisoning", "method": s}
            for trainer in values["train.trainer"]:
                over = {"seed": seed, "variant": variant,
                        "train": {"trainer": trainer, "lam": LAM if trainer in ("trades", "thrm") else 0.0},
                        "eval": {"every": max(1, epochs)}}
                out.append((merge(base, over), {}))
    return out


def table(rows: list[dict], sets: list[str], trainers: list[str]) -> tuple[list[str], list[list[str]], list[dict]]:
    """001's layout from finished runs (dicts with train.trainer, variant.name/method, acc_clean): rows = defence,
    columns = training set; cell ``ours mean ± std [001's]`` in %. Returns (header, body, the averaged cells)."""
    from hyporay.analysis.runs import mean_std

    by: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        if r.get("acc_clean") is None:  # a finished run always has it; anything else is not a result
            continue
        s = "clean" if r.get("variant.name") == "quality" else r.get("variant.method")
        by.setdefault((r["train.trainer"], s), []).append(float(r["acc_clean"]))
    cells = []
    for t in trainers:
        for s in sets:
            if (t, s) in by:
                mean, std = mean_std(by[(t, s)])
                cells.append({"trainer": t, "set": s, "n_seeds": len(by[(t, s)]), "acc_clean": mean,
                              "acc_clean_std": std, "paper": paper_value(t, s)})
    cell = {(c["trainer"], c["set"]): c for c in cells}

    def fmt(t: str, s: str) -> str:
        c = cell.get((t, s))
        ours = "n/a" if c is None else f"{100 * c['acc_clean']:.1f} ± {100 * c['acc_clean_std']:.1f}"
        p = paper_value(t, s)
        return ours + (f" [{p:.2f}]" if p is not None else "")

    header = ["defence"] + [s.upper() if s != "clean" else "Clean" for s in sets] + ["L2C (001 only)"]
    body = [[NAMES.get(t, t)] + [fmt(t, s) for s in sets]
            + [f"[{paper_value(t, 'l2c'):.2f}]" if t in PAPER else ""] for t in trainers]
    return header, body, cells


def verdict(cells: list[dict]) -> tuple[bool | None, list[str]]:
    """001's claim, per poisoned set that hurts ST: every AT-family defence run (PGD-AT, GAIRAT, FAT) recovers more
    than ``RECOVERED`` of the accuracy ST lost, and RandNoise does not. Recovery = (acc_D(P) - acc_ST(P)) /
    (acc_ST(clean) - acc_ST(P)), on means over seeds. A poison hurts when ST's loss exceeds both ``HURT_MIN`` and
    twice its standard error over seeds (sqrt(sd_clean²/n_clean + sd_P²/n_P)): a smaller loss is seed noise and
    leaves nothing to recover. Returns (the claim holds on every set that can tell, or None when none can; lines)."""
    acc = {(c["trainer"], c["set"]): c for c in cells}
    if ("natural", "clean") not in acc:
        return None, ["no ST run on the clean set: no verdict"]
    clean = acc[("natural", "clean")]
    lines, holds = [], {}
    for s in ("p1", "p2", "p3", "p4", "p5"):
        if ("natural", s) not in acc:
            continue
        st = acc[("natural", s)]
        lost = clean["acc_clean"] - st["acc_clean"]
        if min(clean["n_seeds"], st["n_seeds"]) < 2:  # no spread to measure: the threshold alone decides, said so
            se = 0.0
            head = (f"{s.upper()}: ST loses {100 * lost:.1f} points (one seed: no noise estimate, judged on the "
                    f"{100 * HURT_MIN:.0f}-point threshold alone)")
        else:
            se = math.sqrt(clean["acc_clean_std"] ** 2 / clean["n_seeds"] + st["acc_clean_std"] ** 2 / st["n_seeds"])
            head = f"{s.upper()}: ST loses {100 * lost:.1f} ± {100 * se:.1f} points"
        if lost <= max(HURT_MIN, 2 * se):
            lines.append(f"{head}: within seed noise (or below {100 * HURT_MIN:.0f} point), nothing to recover")
            continue
        rec = {t: (acc[(t, s)]["acc_clean"] - st["acc_clean"]) / lost for t in DEFENCES
               if t != "natural" and (t, s) in acc}
        at = {t: r for t, r in rec.items() if t in AT_FAMILY}
        ok_at = bool(at) and all(r > RECOVERED for r in at.values())
        ok_noise = "randnoise" in rec and rec["randnoise"] <= RECOVERED
        if at and "randnoise" in rec:
            holds[s] = ok_at and ok_noise
        parts = ", ".join(f"{NAMES[t]} {100 * r:.0f}%" for t, r in rec.items())
        lines.append(f"{head}; recovered: {parts} -> {'AT recovers most' if ok_at else 'AT does NOT recover most'}, "
                     f"{'RandNoise does not' if ok_noise else 'RandNoise DOES (or was not run)'}")
    if not holds:
        return None, lines + ["no poisoned set hurt ST beyond seed noise with both AT and RandNoise runs: no verdict"]
    yes = [s.upper() for s, h in holds.items() if h]
    no = [s.upper() for s, h in holds.items() if not h]
    lines.append(f"holds on {', '.join(yes) or 'no set'}; fails on {', '.join(no) or 'no set'}")
    return all(holds.values()), lines


def accuracy_runs(df):
    """(the runs whose clean accuracy is a result, the others by outcome, how many of the kept are constant).

    Unlike the risk tables, a run whose model predicts one class whatever the input ("degenerate": logits do not
    depend on the input) is kept: its clean accuracy is well defined, and a poison that collapses ST is the
    strongest effect Table 2 can show (leaving it out would overstate ST's accuracy on that set). A model with
    non-finite logits, a diverged or an unfinished run stays out."""
    from collections import Counter

    from hyporay import metrics as M

    if df.empty:
        return df, Counter(), 0
    finite = df[M.NONFINITE_LOGITS].fillna(0) == 0 if M.NONFINITE_LOGITS in df else True
    constant = (df["outcome"] == "degenerate") & finite
    keep = (df["outcome"] == "result") | constant
    return df[keep].copy(), Counter(o for o in df.loc[~keep, "outcome"]), int(constant.sum())


def report(ctx: dict) -> list[Path]:
    """The sweep's ``after`` hook: delusive_table.md / .csv and the verdict."""
    from hyporay.analysis import tables as T
    from hyporay.analysis.runs import describe_left_out, records

    res, left, constant = accuracy_runs(ctx["table"])
    trials = ctx["trials"]
    sets = T.unique(training_set(t) for t in trials)
    trainers = T.unique(t["train"]["trainer"] for t in trials)
    header, body, cells = table(records(res), sets, trainers)
    holds, lines = verdict(cells)
    seeds = sorted({c["n_seeds"] for c in cells})
    left_txt = describe_left_out(left)
    caption = (f"Clean test accuracy (%) after training on each set, mean ± std over {'/'.join(map(str, seeds))} "
               f"seed(s), [001's CIFAR-10 ResNet-18 number]; {T.threat_caption(trials[0], ctx['profile'])}"
               + (f"; left out: {left_txt} run(s)" if left_txt else "")
               + (f"; {constant} run(s) predict one class whatever the input, kept (their accuracy is the poison's "
                  "effect)" if constant else "") + ".")
    verdict_txt = {True: "HOLDS", False: "DOES NOT HOLD", None: "CANNOT BE DECIDED"}[holds]
    out = Path(ctx["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    md = out / "delusive_table.md"
    md.write_text(T.markdown_table(header, body, caption)
                  + f"\n001's claim (adversarial training recovers more than {RECOVERED:.0%} of the accuracy a poison "
                    f"takes from ST, random noise does not): **{verdict_txt}** here.\n\n"
                  + "\n".join(f"- {ln}" for ln in lines) + "\n")
    ctx.get("say", print)("\n" + md.read_text())
    return [md, T.write_csv(cells, out / "delusive_table.csv")]

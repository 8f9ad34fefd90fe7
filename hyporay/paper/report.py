"""The reproduction report (sweeps/reproduce.py's ``after`` hook): report.md with the paper's numbers beside ours,
one computed verdict per claim, where the runs' code came from, and ``trials.json``: the exact plan it was built
from, so a test notices when the code would now run other trials (a stale report)."""
from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path

from hyporay import metrics as M
from hyporay import provenance as P
from hyporay.analysis import frontier as F
from hyporay.analysis import plots, runs
from hyporay.analysis import tables as R
from hyporay.paper.claims import RULES, claim1, claim2, claim3, claim4, claim5, fig3_groups
from hyporay.paper.grid import FIG4_TRAINERS, N_BOOT, T3_TRAINERS, T3_VARIANTS
from hyporay.paper.published import CLAIMS, PAPER_LABEL, PAPER_T1, PAPER_T3, TRAINER_NAMES

PLAN_FILE = "trials.json"


# --- the plan a report was built from ------------------------------------------------------------------------

def plan_record(planned, profile: str, command: str) -> dict:
    """The plan as a small, reviewable record: the identity (``provenance.identity``) of the first trial, and per
    trial its name, config hash, parts and the fields in which it differs from that base."""
    idents = [P.identity(p.config) for p in planned]
    base = idents[0] if idents else {}
    trials = [{"name": p.name, "config_sha256": P.config_hash(p.config), "parts": p.tags.get("hyporay.parts", ""),
               "differs": {k: v for k, v in ident.items() if base.get(k, "<absent>") != v}
               | {k: "<absent>" for k in base if k not in ident}}
              for p, ident in zip(planned, idents)]
    return {"profile": profile, "command": command, "plan_sha256": P.plan_hash([p.config for p in planned]),
            "base": base, "trials": trials}


def compare(recorded: dict, now: dict) -> list[str]:
    """What differs between a recorded plan and the plan the code makes now (empty: the same trials)."""
    out = []
    old = {t["name"]: t for t in recorded.get("trials", [])}
    new = {t["name"]: t for t in now.get("trials", [])}
    for name in sorted(set(old) - set(new)):
        out.append(f"trial {name}: in the report, no longer planned")
    for name in sorted(set(new) - set(old)):
        out.append(f"trial {name}: planned now, not in the report")
    for name in sorted(set(old) & set(new)):
        if old[name]["config_sha256"] == new[name]["config_sha256"]:
            continue
        a = {**recorded["base"], **old[name]["differs"]}
        b = {**now["base"], **new[name]["differs"]}
        keys = sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))
        out.append(f"trial {name}: " + "; ".join(f"{k} was {a.get(k, '<absent>')!r}, now {b.get(k, '<absent>')!r}"
                                                 for k in keys[:5]) + (" ..." if len(keys) > 5 else ""))
    return out


# --- helpers ---------------------------------------------------------------------------------------------------

def _hardware() -> str:
    import torch

    gpus = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) or "no GPU"
    return f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPU core(s), {gpus}".replace("  ", " ")


def _pct3(c: dict | None) -> str:
    return " / ".join(R.pct(c[k]) for k in (M.ACC_CLEAN, M.ACC_ADV, M.ACC_HYP)) if c else "n/a"


def _paper3(v: tuple | None) -> str:
    return " / ".join(f"{x:.2f}" for x in v) if v else "—"


def _part(df, name: str) -> list[dict]:
    return [r for r in runs.records(df) if name in (r.get("parts") or ())]


def fig4_rows(rows: list[dict]) -> list[dict]:
    """Fig. 4's rows with each run under every curve it feeds (natural training at λ = 0 is TRADES' and THRM's
    λ = 0 point: planned and trained once)."""
    out = []
    for r in rows:
        for curve in r.get("curves") or (r.get("train.trainer"),):
            out.append({**r, "train.trainer": curve})
    return out


def code_lines(df) -> list[str]:
    """The first lines of a report: which code produced its runs, never a commit they did not run."""
    seen = runs.commits(df)
    clean = runs.one_clean_commit(df)
    if clean:
        return [f"- code: every run ran commit `{clean}` (clean tree)"]
    lines = ["- **code: NOT one clean commit** — these numbers come from: "
             + "; ".join(f"{k} ({v} runs)" for k, v in sorted(seen.items()))]
    return lines


def machine_lines(df) -> list[str]:
    """Which machine computed the runs (torch, CPU model, threads; docs/data.md: bit for bit on the same machine and
    build, within noise elsewhere)."""
    keys = [k for k in P.MACHINE_KEYS if k in getattr(df, "columns", ())]
    if not keys or df.empty:
        return ["- machine: not recorded by these runs"]
    seen: dict[str, int] = {}
    for r in df[keys].to_dict("records"):
        label = P.describe_machine({k: v for k, v in r.items() if isinstance(v, str)})
        seen[label] = seen.get(label, 0) + 1
    return ["- machine: " + "; ".join(f"{k} ({v} runs)" for k, v in sorted(seen.items()))]


def training_caption(trial: dict) -> str:
    from hyporay.config import load_config

    t = load_config(trial).train
    return (f"training: {t.epochs} epochs, batch {t.batch_size}, SGD lr {t.lr:g}"
            + (f" ({t.lr_large_lambda:g} for λ ≥ 10)" if t.lr_large_lambda else "")
            + f", momentum {t.momentum:g}, weight decay {t.weight_decay:g}, milestones {t.milestones}, "
              f"augment {t.augment}")


# --- the report ----------------------------------------------------------------------------------------------

def build_report(df, planned, profile: str, out: Path, *, command: str, hardware: str, n_boot: int = N_BOOT
                 ) -> tuple[str, dict, list[Path]]:
    """Write report.md, trials.json and the figures/tables under ``out`` from the runs table; returns (markdown,
    claims, paths)."""
    out.mkdir(parents=True, exist_ok=True)
    res, left = runs.results(df)
    trials = [p.config for p in planned]
    t0 = trials[0]
    threat = R.threat_caption(t0, profile)
    settings = f"{threat}; {training_caption(t0)}"
    model3 = next((t["model"]["name"] for t in trials if t["train"]["trainer"] == "pgd_at"), t0["model"]["name"])
    epochs = sorted({t["train"]["epochs"] for t in trials})
    n_seeds = len({t["seed"] for t in trials})
    ours = f"{t0['data']['name']}, {epochs[0] if len(epochs) == 1 else epochs} epoch(s), {hardware}"
    left_text = runs.describe_left_out(left)
    rebuild = command.split(" (report rebuilt")[0]
    md = [f"# Reproduction of \"With False Friends Like These\" (000): profile `{profile}`", "",
          *code_lines(df),
          *machine_lines(df),
          f"- generated: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
          f"- rebuild with: `{rebuild}` (from the project root; the plan is in `{PLAN_FILE}`)",
          f"- trials: {len(res)} with results of {len(planned)} planned" + (f"; left out: {left_text}" if left_text
                                                                             else "") + f"; {n_seeds} seed(s)",
          f"- {settings}", f"- hardware: {hardware}",
          "- every number of ours is a mean over seeds (± standard deviation where shown); the paper's numbers are "
          "its published CIFAR-10 results (GPU), shown for the layout and orders of magnitude only: "
          + ("the data set differs." if t0["data"]["name"] != "cifar10" else "same data set."), ""]
    paths: list[Path] = []
    part = {p: _part(res, p) for p in ("t12", "t3", "fig3", "fig4")}

    # Tables 1-2
    models = R.unique(r["model.name"] for r in part["t12"])
    header, body, cells = R.substandard_table(part["t12"], models)
    paths.append(R.write_csv(cells, out / "table1_2.csv"))
    md += ["## Tables 1-2: substandard training sets (natural training)", "",
           R.markdown_table(header, body, f"Ours — accuracy (%) D / A / F, {ours}; {settings}."),
           R.markdown_table(["training set", "MLP", "VGG-16", "WRN-28-10"],
                            [[R.VARIANTS[v]] + [_paper3(PAPER_T1[v][m]) for m in ("mlp", "vgg16", "wrn28_10")]
                             for v in PAPER_T1], f"Paper (Table 1) — accuracy (%) D / A / F, {PAPER_LABEL}.")]

    # Table 3
    t3 = {(c["variant.name"], c["train.trainer"]): c for c in R.mean_by(
        part["t3"], ["variant.name", "train.trainer"], [M.ACC_CLEAN, M.ACC_ADV, M.ACC_HYP, M.HYPOCRITICAL_RISK])}
    body3 = []
    for v in T3_VARIANTS:
        for tr, lam in T3_TRAINERS:
            c = t3.get((v, tr))
            name = TRAINER_NAMES[tr] + (f" (λ={lam:g})" if tr == "trades" else "")
            body3.append([R.VARIANTS[v], name, _pct3(c),
                          R.mean_pm(c[M.HYPOCRITICAL_RISK], c[f"{M.HYPOCRITICAL_RISK}_std"]) if c else "n/a",
                          _paper3(PAPER_T3.get((v, tr)))])
    paths.append(R.write_csv(list(t3.values()), out / "table3.csv"))
    md += ["## Table 3: adversarial training on Quality and Poisoning", "",
           R.markdown_table(["training set", "trainer", f"ours D / A / F (%) ({model3})", "ours R_hyp(D-)",
                             "paper D / A / F (%) (ResNet-18, CIFAR-10)"], body3,
                            f"Ours: {ours}; {settings}. Paper: {PAPER_LABEL}; it publishes no Poisoning NT row "
                            "for ResNet-18 (—).")]

    # Fig. 3
    groups = fig3_groups(part["fig3"])
    if groups:
        labels = [f"{R.VARIANTS.get(g['variant.name'], g['variant.name'])}\n{g['model.name']}"
                  f"\n{TRAINER_NAMES.get(g['train.trainer'], g['train.trainer'])}" for g in groups]
        paths.append(plots.bars_png(groups, [(M.HYPOCRITICAL_RISK, "hypocritical (toward the true label)"),
                                             ("targeted_max", "targeted, best fixed label"),
                                             (M.TARGETED_MEAN, "targeted, mean over labels")], labels,
                                    out / "fig3.png", f"Fig. 3 (ours): {t0['data']['name']}; {threat}",
                                    "attack success rate on misclassified points"))
        paths.append(R.write_csv([{k: v for k, v in g.items() if k != "labels"} for g in groups], out / "fig3.csv"))
    body_f3 = [[R.VARIANTS.get(g["variant.name"], g["variant.name"]), g["model.name"],
                TRAINER_NAMES.get(g["train.trainer"], g["train.trainer"]), f"{g[M.N_MISCLASSIFIED]:.1f}",
                f"{g[M.HYPOCRITICAL_RISK]:.3f}", f"{g[M.TARGETED_MEAN]:.3f}", f"{g['targeted_max']:.3f}"]
               for g in groups]
    md += ["## Fig. 3: hypocritical vs targeted attacks on misclassified points", "",
           "![Fig. 3](fig3.png)" if groups else "(no trial with targeted metrics finished)", "",
           R.markdown_table(["training set", "model", "trainer", "misclassified (mean)", "R_hyp(D-)",
                             "targeted (mean over labels)", "targeted (best label)"], body_f3,
                            f"Ours: {ours}; {threat}; targeted success toward label k counts misclassified points "
                            "whose true label and clean prediction differ from k. The paper's Fig. 3 (CIFAR-10) "
                            "shows the same comparison as bars; it publishes no table."), ""]

    # Fig. 4
    f4 = fig4_rows(part["fig4"])
    import pandas as pd

    pts = F.points(pd.DataFrame([{**r, "curves": ()} for r in f4]), F.DEFAULT_LABEL) if f4 else []
    if pts:
        title = f"Fig. 4 (ours): TRADES vs THRM · {profile} · {t0['data']['name']}/{model3}"
        paths += [R.write_csv(F.csv_rows(pts), out / "frontier.csv"),
                  plots.frontier_png(pts, out / "frontier.png", title, threat)]
    lams = sorted({p.label for p in pts})
    pt = {(p.trainer, p.label): p for p in pts}

    def cell(tr, lam):
        p = pt.get((tr, lam))
        if p is None:
            return "n/a"
        upper = p.hypocritical_risk_certified_upper
        bracket = f" ≤ {upper:.3f} certified" if upper == upper else ""
        return (f"{R.mean_pm(p.natural_risk, p.natural_risk_std)} ; "
                f"{R.mean_pm(p.hypocritical_risk, p.hypocritical_risk_std)}{bracket}{' (front)' if p.front else ''}")

    body4 = [[f"{lam:g}"] + [cell(tr, lam) for tr in FIG4_TRAINERS] for lam in lams]
    fronts = [[TRAINER_NAMES.get(tr, tr), ", ".join(f"λ={p.label:g} ({p.natural_risk:.3f}, {p.hypocritical_risk:.3f})"
                                                    for p in F.front(ps)) or "n/a"]
              for tr, ps in sorted(F.by_trainer(pts).items())]
    md += ["## Fig. 4: TRADES vs THRM trade-off over λ", "",
           "![Fig. 4](frontier.png)" if pts else "(no Fig. 4 trial finished)", "",
           R.markdown_table(["λ", "TRADES: natural risk ; R_hyp(D-)", "THRM: natural risk ; R_hyp(D-)"], body4,
                            f"Ours: {ours}, {model3} on Quality; {settings}; mean ± std over seeds; λ = 0 is natural "
                            "training, run once per seed and shared by both curves. The paper's Fig. 4 (CIFAR-10, "
                            "ResNet-18) is a plot with no published table."),
           R.markdown_table(["trainer", "Pareto front of its mean points (natural risk, R_hyp(D-)), by natural risk"],
                            fronts, "Each trainer's own Pareto front: the points no other λ of the same trainer beats "
                                    "in both risks (the line drawn in the figure)."), ""]

    # claims
    claims = {1: claim1(part["t12"]), 2: claim2(part["t3"], n_boot), 3: claim3(f4, n_boot), 4: claim4(f4, n_boot),
              5: claim5(groups)}
    md += ["## The five claims: verdicts computed from the runs", ""]
    for k, c in claims.items():
        md += [f"**Claim {k}.** {CLAIMS[k]}", "", f"- verdict: **{c['verdict']}**", f"- statistic: {c['statistic']}",
               f"- rule: {RULES[k]}", ""]
    md += ["## Method notes", "",
           ("- Bootstrap intervals resample seeds only (the trials log aggregate metrics, not per-example "
            "outcomes), so they reflect seed-to-seed variation (initialisation, batch order, attack starts), not the "
            "sampling of test points; with 3 seeds a bootstrap has only 10 distinct resamples: a coarse interval. "
            "Intervals, rank correlations, permutation and sign tests come from `scipy.stats`."),
           ("- Hypervolume: the area dominated by the mean-over-seeds points of one trainer (all λ), bounded by the "
            "reference point; larger is a better trade-off. Claim 4 bounds it at the natural risk both trainers "
            "reach (the whole square also rewards reaching natural risks the other trainer never reaches)."),
           ("- Runs whose numbers are not results (unfinished, diverged, degenerate models) are left out of every "
            "table and claim, and counted above."),
           ("- R_hyp(D-) found by the attack is a lower bound; where the runs certified their final model "
            "(`eval.certify`), Fig. 4's cells also give the certified upper bound (`≤ ... certified`): the true "
            "hypocritical risk lies in between. A bound of 1.000 means no misclassified point could be certified "
            "at this ε (the MLPs here are not certifiably robust; see the README's bracket section)."),
           ("- Verdicts are computed by `hyporay/paper/claims.py` (`claim1` ... `claim5`) from the MLflow child runs "
            "of this sweep; nothing in this report is written by hand."), ""]
    text = "\n".join(md)
    (out / "report.md").write_text(text)
    (out / "claims.json").write_text(json.dumps({str(k): v for k, v in claims.items()}, indent=1, default=_json))
    (out / PLAN_FILE).write_text(json.dumps(plan_record(planned, profile, rebuild), indent=1, default=str))
    return text, claims, [out / "report.md", out / "claims.json", out / PLAN_FILE] + paths


def _json(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (set, tuple)):
        return list(v)
    return float(v)


def report(ctx: dict) -> list[Path]:
    """The sweep's ``after`` hook: the report under --out (default docs/results/<profile>), verdict lines."""
    args = ctx.get("args")
    out = Path(getattr(args, "out", None) or f"docs/results/{ctx['profile']}")
    say = ctx.get("say", print)
    _text, claims, paths = build_report(ctx["table"], ctx["plan"], ctx["profile"], out, command=ctx["command"],
                                       hardware=_hardware(), n_boot=getattr(args, "bootstrap", N_BOOT) or N_BOOT)
    say(f"\nreport: {out / 'report.md'}")
    for k, c in claims.items():
        say(f"claim {k}: {c['verdict']} — {c['statistic']}")
    return paths

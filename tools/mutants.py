#!/usr/bin/env python3
"""Mutation testing of the science code against the fast tests (``make mutants``; not part of CI).

Two parts, each on a throwaway copy of the working tree (the checkout itself is never modified):

1. **Named mutations** (always): the one-line changes that would make a result wrong and that the suite must
   never let through: the sign of each objective, which attack each trainer uses, the KL direction, λ, the
   projection, the step, the success tests, the subset of each risk, the restart merge, the auto starts, and
   every audit check turned into a constant pass. Several of them sit where mutmut does not look (module-level
   tables such as the auto starts, check verdicts in ``hyporay/audit.py``, a new import in the core). Each is
   applied alone and only the test files that guard it are run, with ``-x``.
2. **mutmut** (when it is importable, ``--mutmut-path`` names where it is installed): every mutant mutmut makes
   of ``hyporay/attacks/*``, ``hyporay/metrics.py`` and ``hyporay/trainers/losses.py``, against the fast
   tests. Its survivors are compared with the equivalent mutants listed, each with the reason, in
   ``tests/mutants_equivalent.md``; any other survivor is reported as NEW.

Exit status 0 when every named mutation is killed and every mutmut survivor is a listed equivalent mutant.

    python tools/mutants.py                      # both parts
    python tools/mutants.py --only named -k kl   # named mutations whose name contains "kl"
    python tools/mutants.py --only mutmut --keep # keep the mutmut directory (mutmut show / browse there)
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENT = ROOT / "tests" / "mutants_equivalent.md"

# mutmut's tests: the science modules' own fast unit tests (no Ray, no MLflow, no subprocess); the named
# mutations below also use tests/test_audit.py (its command-line tests deselected) and tests/test_imports.py
FAST_TESTS = ["tests/test_attacks.py", "tests/test_early_stop.py", "tests/test_metrics.py", "tests/test_trainers.py",
              "tests/test_apgd.py", "tests/test_degenerate.py",  # APGD and the margin score; metrics' degeneracy
              "tests/test_decided_eval.py",  # evaluation that stops once decided (hyporay/witnesses.py)
              "tests/test_seed_trainers.py",  # 001's defences in losses.py: RandNoise, FAT, GAIRAT
              "tests/test_analysis.py::test_metric_name_helper_round_trip"]  # hyporay.metrics' name helpers
FAST_DESELECT = "not cli"
MUTMUT_SOURCES = ["hyporay/attacks/", "hyporay/metrics.py", "hyporay/witnesses.py", "hyporay/trainers/losses.py"]

A, M, T, AU = "tests/test_attacks.py", "tests/test_metrics.py", "tests/test_trainers.py", "tests/test_audit.py"


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    k: str | None = None  # pytest -k expression
    why: str = ""


def _m(name, path, old, new, tests, k=None):
    return Mutation(name, path, old, new, tuple(tests), k)


OBJ, PGD, THR, LOSS, MET = ("hyporay/attacks/objectives.py", "hyporay/attacks/pgd.py", "hyporay/attacks/threat.py",
                            "hyporay/trainers/losses.py", "hyporay/metrics.py")
COM, WIT = "hyporay/attacks/common.py", "hyporay/witnesses.py"
ES, DE = "tests/test_early_stop.py", "tests/test_decided_eval.py"
AUA, AUM = "hyporay/audit/attack_checks.py", "hyporay/audit/model_checks.py"

NAMED: list[Mutation] = [
    # --- objectives: the sign of each score, each success test ---------------------------------------------
    _m("adversarial objective reversed", OBJ,
       'def score(self, logits, y, target):\n        return F.cross_entropy(logits, y, reduction="none")',
       'def score(self, logits, y, target):\n        return -F.cross_entropy(logits, y, reduction="none")', [A]),
    _m("hypocritical objective reversed", OBJ, 'return -F.cross_entropy(logits, y, reduction="none")',
       'return F.cross_entropy(logits, y, reduction="none")', [A]),
    _m("targeted objective moves away from its target", OBJ,
       'return -F.cross_entropy(logits, target, reduction="none")',
       'return F.cross_entropy(logits, target, reduction="none")', [A]),
    _m("targeted objective aims at the true label", OBJ,
       'return -F.cross_entropy(logits, target, reduction="none")',
       'return -F.cross_entropy(logits, y, reduction="none")', [A]),
    _m("stability objective descends the KL", OBJ, "return (log_p.exp() * (log_p - log_q)).sum(dim=1)",
       "return -(log_p.exp() * (log_p - log_q)).sum(dim=1)", [A]),
    _m("adversarial success flipped", OBJ, "        return logits.argmax(1) != y\n",
       "        return logits.argmax(1) == y\n", [A, M]),
    _m("hypocritical success flipped", OBJ,
       'reduction="none")\n\n    def success(self, logits, y, target):\n        return logits.argmax(1) == y\n',
       'reduction="none")\n\n    def success(self, logits, y, target):\n        return logits.argmax(1) != y\n', [A, M]),
    _m("targeted success flipped", OBJ, "return logits.argmax(1) == target", "return logits.argmax(1) != target",
       [A, M]),
    _m("stability success flipped", OBJ, "return logits.argmax(1) != self._log_p_clean.argmax(1)",
       "return logits.argmax(1) == self._log_p_clean.argmax(1)", [A, M]),
    # --- the PGD engine ---------------------------------------------------------------------------------------
    _m("step removed", PGD, "x_adv = project(threat.step(x_adv, grad, step_size, generator))",
       "x_adv = project(x_adv)", [A]),
    _m("step reversed", PGD, "x_adv = project(threat.step(x_adv, grad, step_size, generator))",
       "x_adv = project(threat.step(x_adv, -grad, step_size, generator))", [A]),
    _m("restart merge reversed (failure beats success)", COM, "return (succ_new & ~succ_old) | (",
       "return (~succ_new & succ_old) | (", [A]),
    _m("restart merge tie-break reversed", COM, "(score_new > score_old))", "(score_new < score_old))", [A]),
    _m("attack not in eval mode", PGD, "    with frozen_eval(model), torch.enable_grad():\n        if objective",
       "    with torch.enable_grad():\n        if objective", [A, T]),
    _m("auto start: adversarial gaussian", COM, '"adversarial": ("uniform", None)',
       '"adversarial": ("gaussian", 0.01)', [A], "auto_random_start"),
    _m("auto start: hypocritical sigma 0.001", COM, '"hypocritical": ("gaussian", 0.01)',
       '"hypocritical": ("gaussian", 0.001)', [A], "auto_random_start"),
    _m("auto start: targeted sigma 0.001", COM, '"targeted": ("gaussian", 0.01)',
       '"targeted": ("gaussian", 0.001)', [A], "auto_random_start"),
    _m("auto start: stability sigma 0.01", COM, '"stability": ("gaussian", 0.001)',
       '"stability": ("gaussian", 0.01)', [A], "auto_random_start"),
    _m("random start ignored", COM, 'if kind == "none" or eps == 0:', "if True:", [A]),
    # --- early stop (pgd/apgd(early_stop=τ): common.StopRule) ----------------------------------------------------
    _m("early stop ignores tau", COM, "(first >= 0) & (k - first >= self.tau)", "(first >= 0)", [ES]),
    _m("early stop counts from the latest success", COM,
       "first = torch.where(decided & (first < 0), torch.full_like(first, k), first)",
       "first = torch.where(decided, torch.full_like(first, k), first)", [ES]),
    _m("early stop: never-broken examples keep the last point", COM,
       "take = ~self.fb_seen[idx] | better(succ, s, self.fb_succ[idx], self.fb_score[idx])",
       "take = torch.ones_like(succ)", [ES]),
    _m("early stop: restarts rerun decided examples", COM,
       "return (self.todo & (self.tally.first < 0)).nonzero().flatten()", "return self.todo.nonzero().flatten()",
       [ES]),
    _m("early stop: restart draws a new start per subset", PGD, "xc, x_adv, yc = x[idx], x_start[idx], y[idx]",
       "xc, x_adv, yc = x[idx], start_point(x[idx], eps, threat, kind, sigma, generator), y[idx]", [ES]),
    _m("early stop: backward not counted", PGD, "rule.tally.spend(idx, 0, 1)", "rule.tally.spend(idx, 0, 0)", [ES]),
    _m("early stop: step skipped", PGD, "x_adv = project(threat.step(x_now.clone(), grad, step_size, generator))",
       "x_adv = project(x_now.clone())", [ES]),
    # --- evaluation that stops once decided (hyporay/witnesses.py) ---------------------------------------------
    _m("decided rule: hypocritical witness reversed", WIT, "hyp[full] |= pred == y[full]",
       "hyp[full] |= pred != y[full]", [DE]),
    _m("decided rule: targeted witnesses not awaited", WIT, "            u |= counts[t][rows] & ~tgt[t][rows]\n",
       "            pass\n", [DE]),
    _m("decided rule: attacks draw from the running generator", WIT, "states.append(_fork(generator))",
       "states.append(generator)", [DE]),
    _m("decided rule: stability against y instead of f(x)", WIT, "sta[full] |= pred != clean_pred[full]",
       "sta[full] |= pred != y[full]", [DE]),
    # --- threat models: step, projection, random start -------------------------------------------------------
    _m("linf step reversed", THR, "return x_adv.add_(grad.sign_(), alpha=step_size)",
       "return x_adv.add_(grad.sign_(), alpha=-step_size)", [A]),
    _m("linf step not a sign step", THR, "return x_adv.add_(grad.sign_(), alpha=step_size)",
       "return x_adv.add_(grad, alpha=step_size)", [A]),
    _m("l2 step reversed", THR, "return x_adv.add_(direction, alpha=step_size)",
       "return x_adv.add_(direction, alpha=-step_size)", [A]),
    _m("linf projection removed", THR, "return lambda z: z.clamp_(lo, hi)", "return lambda z: z.clamp_(0.0, 1.0)",
       [A]),
    _m("l2 projection removed", THR, "return lambda z: z.sub_(x).renorm_(2, 0, eps).add_(x).clamp_(0.0, 1.0)",
       "return lambda z: z.clamp_(0.0, 1.0)", [A]),
    _m("box clamp removed (linf)", THR, "lo, hi = (x - eps).clamp_(min=0.0), (x + eps).clamp_(max=1.0)",
       "lo, hi = (x - eps), (x + eps)", [A]),
    _m("linf uniform start one-sided", THR, "return _rand(x, generator).mul_(2 * eps).sub_(eps)",
       "return _rand(x, generator).mul_(eps)", [A]),
    _m("l2 uniform start on the sphere", THR, "radius = _rand(x.new_empty(x.shape[0]), generator).pow_(1.0 / d).mul_(eps)",
       "radius = torch.ones(x.shape[0], device=x.device).mul_(eps)", [A]),
    _m("core imports an orchestration library", THR, "import torch\n", "import torch\nimport optuna  # noqa\n",
       ["tests/test_imports.py"]),
    # --- the trainers' losses ----------------------------------------------------------------------------------
    _m("THRM trained with the TRADES attack", LOSS, 'return _regularised("hypocritical", model, x, y, ctx)',
       'return _regularised("stability", model, x, y, ctx)', [T]),
    _m("TRADES trained with the hypocritical attack", LOSS, 'return _regularised("stability", model, x, y, ctx)',
       'return _regularised("hypocritical", model, x, y, ctx)', [T]),
    _m("PGD-AT trained with the hypocritical attack", LOSS, 'x_adv = ctx.attack.run(model, x, y, "adversarial"',
       'x_adv = ctx.attack.run(model, x, y, "hypocritical"', [T]),
    _m("KL direction reversed in the loss", LOSS, "ctx.lam * kl_batchmean(logits, logits_pert)",
       "ctx.lam * kl_batchmean(logits_pert, logits)", [T]),
    _m("KL direction reversed in kl_batchmean", LOSS, 'F.kl_div(log_q, log_p, reduction="batchmean"',
       'F.kl_div(log_p, log_q, reduction="batchmean"', [T]),
    _m("KL reduction mean instead of batchmean", LOSS, 'reduction="batchmean", log_target=True',
       'reduction="mean", log_target=True', [T]),
    _m("λ ignored", LOSS, "ctx.lam * kl_batchmean(logits, logits_pert)", "kl_batchmean(logits, logits_pert)", [T]),
    _m("CE taken on x' in TRADES/THRM", LOSS, "return F.cross_entropy(logits, y) + ctx.lam",
       "return F.cross_entropy(logits_pert, y) + ctx.lam", [T]),
    _m("clean side of the KL detached", LOSS, "ctx.lam * kl_batchmean(logits, logits_pert)",
       "ctx.lam * kl_batchmean(logits.detach(), logits_pert)", [T]),
    _m("PGD-AT trained on clean inputs", LOSS,
       "    logits = model(x_adv)\n    return F.cross_entropy(logits, y), logits\n\n\ndef randnoise",
       "    logits = model(x)\n    return F.cross_entropy(logits, y), logits\n\n\ndef randnoise", [T]),
    _m("λ = 0 shortcut taken always", LOSS, "if natural_at(ctx.lam):", "if True:", [T]),
    _m("concat forward ignored", LOSS, "    if concat:", "    if True:", [T]),
    # --- metrics: subsets, witnesses, which attack feeds which risk -------------------------------------------
    _m("R_hyp(D-) on D+", MET, "HYPOCRITICAL_RISK: share(pe.hyp_success, wrong)",
       "HYPOCRITICAL_RISK: share(pe.hyp_success, correct)", [M]),
    _m("R_hyp(D-) on D", MET, "HYPOCRITICAL_RISK: share(pe.hyp_success, wrong)",
       "HYPOCRITICAL_RISK: share(pe.hyp_success)", [M]),
    _m("R_adv(D+) on D-", MET, "ADVERSARIAL_RISK_CORRECT: share(pe.adv_success, correct)",
       "ADVERSARIAL_RISK_CORRECT: share(pe.adv_success, wrong)", [M]),
    _m("R_sta(D-) on D", MET, "STABILITY_RISK_MISCLASSIFIED: share(pe.sta_success, wrong)",
       "STABILITY_RISK_MISCLASSIFIED: share(pe.sta_success)", [M]),
    _m("R_hyp(D-) by the (F-D)/(1-D) shortcut", MET, "    out[ACC_ADV] = share(~pe.adv_success)\n",
       "    out[ACC_ADV] = share(~pe.adv_success)\n    out[HYPOCRITICAL_RISK] = (out[HYPOCRITICAL_RISK_ALL] - "
       "out[ACC_CLEAN]) / (1 - out[ACC_CLEAN]) if out[ACC_CLEAN] < 1 else math.nan\n", [M]),
    _m("stability risk against y instead of f(x)", MET, "sta_success = (stacked != clean_pred).any(0)",
       "sta_success = (stacked != y).any(0)", [M]),
    _m("clean point not a witness", MET, "preds = [clean_pred, adv_pred, sta_pred]", "preds = [adv_pred, sta_pred]",
       [M]),
    _m("adversarial risk from the stability attack", MET,
       'x_adv = spec.run(model, x, y, "adversarial", generator=generator)',
       'x_adv = spec.run(model, x, y, "stability", generator=generator)', [M]),
    _m("hypocritical attack not run", MET, "hyp_pred_w = _predict(model, x_hyp_w)", "hyp_pred_w = hyp_pred_w",
       [M]),
    _m("targeted subset keeps the clean prediction", MET,
       "wrong & (pe.y != label) & (pe.clean_pred != label)", "wrong & (pe.y != label)", [M]),
    _m("targeted attack not run", MET, "hit[wrong_idx] |= _predict(", "hit[wrong_idx] &= _predict(", [M]),
    # --- the audit: every check turned into a constant pass ----------------------------------------------------
    _m("audit eps0_clean always passes", AUA, "return CheckResult(CHECK_EPS0, figure, FLAG if bad else PASS,",
       "return CheckResult(CHECK_EPS0, figure, PASS,", [AU], FAST_DESELECT),
    _m("audit batch_independence always passes", AUM, "    if worst > tol:\n", "    if False:\n", [AU],
       FAST_DESELECT),
    _m("audit state_unchanged always passes", AUM, "    if changed or modes or grads:", "    if False:", [AU],
       FAST_DESELECT),
    _m("audit curve/adversarial always passes", AUA, 'rows.append(CheckResult(f"{CHECK_CURVE}/{ADV}", f"A: {fig}", '
       'FLAG if bad else PASS,', 'rows.append(CheckResult(f"{CHECK_CURVE}/{ADV}", f"A: {fig}", PASS,', [AU],
       FAST_DESELECT),
    _m("audit curve/hypocritical always passes", AUA, 'rows.append(CheckResult(f"{CHECK_CURVE}/{HYP}", f"F: {fig}", '
       'FLAG if bad else PASS,', 'rows.append(CheckResult(f"{CHECK_CURVE}/{HYP}", f"F: {fig}", PASS,', [AU],
       FAST_DESELECT),
    *[_m(f"audit {c}/{d} always passes", AUA, "rows.append(CheckResult(name, figure, FLAG if bad else PASS,",
         f'rows.append(CheckResult(name, figure, FLAG if bad and name != "{c}/{d}" else PASS,', [AU], FAST_DESELECT)
      for c in ("convergence_steps", "convergence_restarts") for d in ("adversarial", "hypocritical")],
    _m("audit pgd_vs_fgsm/adversarial always passes", AUA,
       'rows.append(CheckResult(f"{CHECK_FGSM}/{ADV}", fig, FLAG if gap > tol else PASS,',
       'rows.append(CheckResult(f"{CHECK_FGSM}/{ADV}", fig, PASS,', [AU], FAST_DESELECT),
    _m("audit pgd_vs_fgsm/hypocritical always passes", AUA,
       'rows.append(CheckResult(f"{CHECK_FGSM}/{HYP}", fig, FLAG if gap > tol else PASS,',
       'rows.append(CheckResult(f"{CHECK_FGSM}/{HYP}", fig, PASS,', [AU], FAST_DESELECT),
    _m("audit transfer/adversarial always passes", AUA,
       "rows.append(CheckResult(names[0], fig, FLAG if gap > tol else PASS,",
       "rows.append(CheckResult(names[0], fig, PASS,", [AU], FAST_DESELECT),
    _m("audit transfer/hypocritical always passes", AUA,
       "rows.append(CheckResult(names[1], fig, FLAG if gap > tol else PASS,",
       "rows.append(CheckResult(names[1], fig, PASS,", [AU], FAST_DESELECT),
    _m("audit gradient_health always passes", AUM, "    if share > tol:\n", "    if False:\n", [AU], FAST_DESELECT),
    _m("audit theorem_4_4 always passes", AUM, "    ok = gap <= tol\n", "    ok = True\n", [AU], FAST_DESELECT),
    _m("audit theorem_4_5 always passes", AUM, "rows.append(CheckResult(CHECK_THM45, fig, FLAG if bad else PASS,",
       "rows.append(CheckResult(CHECK_THM45, fig, PASS,", [AU], FAST_DESELECT),
    # the checks other test files drive to a flag (tests/test_apgd.py, test_certify.py, test_degenerate.py)
    *[_m(f"audit apgd_vs_pgd/{d} always passes", AUA,
         'rows.append(CheckResult(f"{CHECK_APGD}/{direction}", fig, FLAG if bad else PASS,',
         f'rows.append(CheckResult(f"{{CHECK_APGD}}/{{direction}}", fig, FLAG if bad and direction != "{d}" else PASS,',
         ["tests/test_apgd.py"], "audit") for d in ("adversarial", "hypocritical")],
    *[_m(f"audit certified_bound/{d} always passes", AUA, "rows.append(CheckResult(name, fig, FLAG if bad else PASS,",
         f'rows.append(CheckResult(name, fig, FLAG if bad and not name.endswith("{d}") else PASS,',
         ["tests/test_certify.py"], "audit") for d in ("adversarial", "hypocritical")],
    _m("audit degenerate always passes", AUM, "    if constant:\n", "    if False:\n", ["tests/test_degenerate.py"]),
]


# --- the working copy --------------------------------------------------------------------------------------

def _tracked_files() -> list[str]:
    """Tracked and untracked-but-not-ignored files of the working tree (what the tests see)."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [f for f in out.split("\0") if f and (ROOT / f).is_file()]


def _copy_tree(dest: Path) -> Path:
    for rel in _tracked_files():
        if rel.split("/")[0] in ("hyporay", "tests", "configs", "sweeps") or rel == "pyproject.toml":
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    return dest


def _env(copy: Path, extra_path: str | None = None) -> dict:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(copy), extra_path) if p)
    return env


MEMORY_GIB = 8  # address space of one test process (a fast-test process needs ~5 GiB of it, ~1 GiB resident)


def _memory_cap() -> None:
    """preexec_fn: a mutant that allocates without end (e.g. a loop bound turned infinite) fails its own tests with
    a MemoryError instead of driving the machine into the kernel's OOM killer, which then picks other programs
    (mutmut's forks inherit the cap)."""
    import resource

    cap = MEMORY_GIB << 30
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def _pytest(copy: Path, tests, k: str | None, timeout: int) -> tuple[int, float, str]:
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-W", "ignore", *tests]
    if k:
        cmd += ["-k", k]
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, cwd=copy, env=_env(copy), capture_output=True, text=True, timeout=timeout,
                           preexec_fn=_memory_cap)
        rc, out = r.returncode, r.stdout + r.stderr
    except subprocess.TimeoutExpired:
        rc, out = -1, f"timed out after {timeout}s"
    return rc, time.perf_counter() - t0, out


# --- part 1: named mutations -------------------------------------------------------------------------------

@dataclass
class Outcome:
    mutation: Mutation
    status: str  # killed / survived / timeout / stale
    seconds: float
    detail: str = ""


def _run_named(mutations: list[Mutation], jobs: int, timeout: int, base: Path) -> list[Outcome]:
    for mu in mutations:  # every mutation must apply to exactly one place in today's source
        text = (ROOT / mu.path).read_text()
        if text.count(mu.old) != 1:
            raise SystemExit(f"mutants: stale named mutation {mu.name!r}: {mu.path} contains its text "
                             f"{text.count(mu.old)} times (update NAMED in tools/mutants.py)")
    copies = [_copy_tree(base / f"named{i}") for i in range(jobs)]
    free = list(copies)

    def one(mu: Mutation) -> Outcome:
        copy = free.pop()
        try:
            target = copy / mu.path
            original = target.read_text()
            target.write_text(original.replace(mu.old, mu.new, 1))
            try:
                rc, secs, out = _pytest(copy, mu.tests, mu.k, timeout)
            finally:
                target.write_text(original)
        finally:
            free.append(copy)
        if rc == -1:
            return Outcome(mu, "timeout", secs)
        if rc == 0:
            return Outcome(mu, "survived", secs)
        failed = re.findall(r"^FAILED (\S+)", out, re.M) or re.findall(r"^ERROR (\S+)", out, re.M)
        return Outcome(mu, "killed", secs, failed[0] if failed else f"exit {rc}")

    with cf.ThreadPoolExecutor(jobs) as pool:
        results = []
        for o in pool.map(one, mutations):
            print(f"  {o.status:<8s} {o.seconds:6.1f}s  {o.mutation.name}" + (f"  [{o.detail}]" if o.detail else ""),
                  flush=True)
            results.append(o)
    return results


# --- part 2: mutmut ------------------------------------------------------------------------------------------

def _mutmut_config() -> str:
    q = lambda xs: "[" + ", ".join(f'"{x}"' for x in xs) + "]"  # noqa: E731
    return ("\n[tool.mutmut]\n"
            f"source_paths = {q(MUTMUT_SOURCES)}\n"
            f"pytest_add_cli_args_test_selection = {q(FAST_TESTS)}\n"
            f'also_copy = {q(["hyporay", "tests", "configs", "sweeps"])}\n'
            f'pytest_add_cli_args = {q(["-p", "no:cacheprovider", "-W", "ignore", "-k", FAST_DESELECT])}\n')


@dataclass
class Survivor:
    name: str
    function: str
    line: str
    diff: str
    reason: str | None = None


def _equivalents() -> dict[tuple[str, str], str]:
    """(function, mutated line) -> why it is equivalent, from the table rows of tests/mutants_equivalent.md."""
    out = {}
    if not EQUIVALENT.is_file():
        return out
    for row in EQUIVALENT.read_text().splitlines():
        if not row.startswith("| `"):
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", row.strip())[1:-1]]
        if len(cells) >= 3:
            out[(cells[0].strip("`"), cells[1].strip("`"))] = cells[2]
    return out


def _function_of(mutant: str) -> str:
    """``hyporay.attacks.pgd.x__start__mutmut_3`` -> ``hyporay.attacks.pgd._start``; methods keep their class
    (``xǁL2Ballǁstep__mutmut_1`` -> ``L2Ball.step``)."""
    module, _, leaf = mutant.rpartition(".")
    leaf = re.sub(r"__mutmut_\d+$", "", leaf)
    if leaf.startswith("xǁ"):  # a method: xǁClassǁname
        return f"{module}.{'.'.join(p for p in leaf[1:].split('ǁ') if p)}"
    return f"{module}.{leaf[2:] if leaf.startswith('x_') else leaf}"  # a function: x_ + name


def _run_mutmut(mutmut_path: str, jobs: int, base: Path) -> tuple[list[Survivor], dict]:
    copy = _copy_tree(base / "mutmut")
    (copy / "pyproject.toml").write_text((copy / "pyproject.toml").read_text() + _mutmut_config())
    env = dict(os.environ, PYTHONPATH=mutmut_path, OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(jobs)], cwd=copy, env=env,
                         capture_output=True, text=True, preexec_fn=_memory_cap)
    if run.returncode != 0:
        print(run.stdout[-3000:], run.stderr[-3000:], sep="\n")
        raise SystemExit(f"mutants: mutmut run failed (exit {run.returncode})")
    return _classify(copy, mutmut_path)


def _classify(copy: Path, mutmut_path: str) -> tuple[list[Survivor], dict]:
    """Survivors of the mutmut run in ``copy`` (kept with --keep), each matched against the equivalents list."""
    env = dict(os.environ, PYTHONPATH=mutmut_path)
    counts: dict = {}
    res = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=copy, env=env,
                         capture_output=True, text=True, check=True).stdout
    status = dict(re.findall(r"^\s*(\S+): (\S[^\n]*)$", res, re.M))
    counts.update({s: sum(v == s for v in status.values()) for s in set(status.values())})
    counts["summary"] = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    if counts.get("not checked"):
        raise SystemExit(f"mutants: {counts['not checked']} mutants were not checked (mutmut run interrupted?)")
    equiv = _equivalents()
    survivors = []
    for name, st in sorted(status.items()):
        if st not in ("survived", "no tests", "suspicious"):  # a timeout: the mutant made the tests run away
            continue
        diff = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=copy, env=env,
                              capture_output=True, text=True).stdout
        plus = [ln[1:].strip() for ln in diff.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
        line = plus[0] if plus else ""
        s = Survivor(name, _function_of(name), line, diff)
        s.reason = equiv.get((s.function, line))
        survivors.append(s)
        if s.reason is None:
            print(f"\n  NEW {st}: {name} ({s.function}): kill it with a test, or list it with why in "
                  f"{EQUIVALENT.relative_to(ROOT)}\n" + "\n".join("    " + ln for ln in diff.splitlines()[-12:]))
    return survivors, counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=("named", "mutmut"), help="run one part only")
    ap.add_argument("-k", dest="filter", help="named mutations whose name contains this text")
    ap.add_argument("--jobs", type=int, default=2, help="parallel test runs (default 2)")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per named mutation's test run")
    ap.add_argument("--mutmut-path", help="directory mutmut is installed in (pip install --target); default: "
                                          "importable from this interpreter")
    ap.add_argument("--keep", action="store_true", help="keep the working copies (printed)")
    ap.add_argument("--classify", metavar="DIR", help="only match the survivors of a kept mutmut run (DIR = the "
                                                      "printed copy's mutmut folder) against the equivalents list")
    args = ap.parse_args(argv)
    if args.classify:
        survivors, counts = _classify(Path(args.classify), os.path.abspath(args.mutmut_path or ""))
        new = [s for s in survivors if s.reason is None]
        print(f"mutmut: {counts['summary']}\nmutmut: {len(survivors)} not killed, {len(new)} NEW")
        return 1 if new else 0

    base = Path(tempfile.mkdtemp(prefix="hyporay-mutants-"))
    t0 = time.perf_counter()
    bad = 0
    try:
        if args.only != "mutmut":
            todo = [mu for mu in NAMED if not args.filter or args.filter.lower() in mu.name.lower()]
            print(f"named mutations: {len(todo)} (each alone, its guarding fast tests with -x)", flush=True)
            t1 = time.perf_counter()
            rc, secs, out = _pytest(_copy_tree(base / "baseline"), sorted({t for mu in todo for t in mu.tests}),
                                    FAST_DESELECT, args.timeout)
            if rc != 0:
                print(out[-3000:])
                raise SystemExit("mutants: the fast tests fail without any mutation; fix them first")
            print(f"  baseline: the unmutated tests pass ({secs:.0f}s)", flush=True)
            res = _run_named(todo, max(1, args.jobs), args.timeout, base)
            survived = [o for o in res if o.status != "killed"]
            bad += len(survived)
            print(f"named: {len(res) - len(survived)} killed, {len(survived)} survived "
                  f"({time.perf_counter() - t1:.0f}s)" + "".join(f"\n  SURVIVED: {o.mutation.name}" for o in survived),
                  flush=True)
        if args.only != "named":
            path = args.mutmut_path
            if path is None and importlib.util.find_spec("mutmut") is None:
                print("mutmut: not installed (make mutants installs it); skipped")
            else:
                t1 = time.perf_counter()
                print(f"mutmut over {', '.join(MUTMUT_SOURCES)} against {len(FAST_TESTS)} fast test files ...",
                      flush=True)
                survivors, counts = _run_mutmut(os.path.abspath(path) if path else "", max(1, args.jobs), base)
                new = [s for s in survivors if s.reason is None]
                bad += len(new)
                print(f"mutmut: {counts['summary']}")
                print(f"mutmut: {len(survivors)} not killed, {len(survivors) - len(new)} of them listed as "
                      f"equivalent in {EQUIVALENT.relative_to(ROOT)}, {len(new)} NEW "
                      f"({time.perf_counter() - t1:.0f}s)")
                unused = sorted(set(_equivalents()) - {(s.function, s.line) for s in survivors})
                if unused:  # the line changed, or a test kills that mutant now: the row explains nothing
                    print(f"mutmut: {len(unused)} row(s) of {EQUIVALENT.relative_to(ROOT)} match no survivor now "
                          "(remove them):" + "".join(f"\n  {f}: {line}" for f, line in unused))
        print(f"mutants: {'ok' if not bad else f'{bad} surviving mutant(s) to look at'} "
              f"({time.perf_counter() - t0:.0f}s)")
    finally:
        if args.keep:
            print(f"working copies kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

"""Every sweep script, as a user runs it, with --dry-run (no Ray, no MLflow): the trial list of each profile, and
bad flags as one-line errors with exit status 2."""
from __future__ import annotations

import contextlib
import io
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from hyporay.engine import main

ROOT = Path(__file__).resolve().parent.parent
SWEEPS = ROOT / "sweeps"

# trials = product of the axes' values x seeds (local: 3 seeds, paper: 1), from sweeps/configs/*.yaml and the
# scripts' fixed axes
EXPECTED = {
    ("thrm_lambda", "local"): (2 * 8 + 1) * 3,  # trainers (trades, thrm) x 8 lambdas > 0, and λ = 0 once
    ("thrm_lambda", "paper"): 2 * 8 + 1,        # (λ = 0 is natural training for both: shared by their curves)
    ("defender_eps", "local"): 3 * 5 * 3,     # pgd_at, trades, thrm x 5 training eps (x lambda 6)
    ("defender_eps", "paper"): 3 * 6,         # x 6 training eps (0..16/255)
    ("attack_steps", "local"): 4 * 3,         # natural, pgd_at, trades, thrm
    ("attack_steps", "paper"): 4,
    ("architectures", "local"): 2 * 2 * 3,    # models (mlp, cnn) x trainers (natural, thrm)
    ("architectures", "paper"): 5 * 2,        # 5 models
    ("substandard", "local"): 5 * 2 * 3,      # 5 training-set variants x models (mlp, cnn)
    ("substandard", "paper"): 5 * 5,
}


BAD = [  # (script, args, what the one-line error names)
    ("thrm_lambda", ["--lambdas", "x"], "--lambdas: cannot read 'x' as float"),
    ("defender_eps", ["--eps", "0,abc"], "--eps: cannot read 'abc' as float"),
    ("defender_eps", ["--eps", "-0.1"], "train.attack.eps"),
    ("attack_steps", ["--trainers", "sgd"], "train.trainer"),
    ("architectures", ["--models", "resnet19"], "model.name: unknown 'resnet19'"),
    ("substandard", ["--variants", "dirty"], "variant.name"),
    ("attack_steps", ["--set", "eval.steps_grid=[0]"], "eval.steps_grid: every value must be >= 1, got 0"),
    ("substandard", ["--profile", "nope"], "profile: unknown 'nope'"),
]
SWEPT = [
    ("defender_eps", ["--profile", "local", "--eps", "0,0.05", "--trainers", "pgd_at", "--seeds", "1"]),
    ("substandard", ["--profile", "paper", "--models", "mlp", "--variants", "noise,quality"]),
]


def _bad_args(args: list[str]) -> list[str]:
    return args if "--profile" in args else [*args, "--profile", "local"]


def _run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("HYPORAY_DEBUG", "RAY_ADDRESS")}
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    return subprocess.run([sys.executable, str(SWEEPS / f"{script}.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _run_in_process(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The script's own ``main(SWEEP)`` in this interpreter (a dry run starts no Ray): what a user's command
    does, without paying a fresh interpreter's torch import 20 times."""
    defn = runpy.run_path(str(SWEEPS / f"{script}.py"), run_name="dry_run_test")["SWEEP"]
    out, err, old = io.StringIO(), io.StringIO(), Path.cwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(defn, list(args), configs_dir=SWEEPS / "configs")
            except SystemExit as exc:  # argparse's usage errors
                code = exc.code
    finally:
        os.chdir(old)
    return subprocess.CompletedProcess([script, *args], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every command of this module, each in its own empty working directory:
    {(script, *args): (completed process, cwd)}."""
    cmds = [(s, "--dry-run", "--profile", p) for s, p in sorted(EXPECTED)]
    cmds += [(s, "--dry-run", *a) for s, a in SWEPT]
    cmds += [(s, "--dry-run", *_bad_args(a)) for s, a, _ in BAD]
    out = {}
    for cmd in cmds:
        cwd = tmp_path_factory.mktemp(cmd[0])
        out[cmd] = (_run_in_process(*cmd, cwd=cwd), cwd)
    return out


def test_a_real_command_line_error_is_one_line(tmp_path):
    r = _run("thrm_lambda", "--dry-run", "--profile", "local", "--lambdas", "x", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr == "thrm_lambda: error: --lambdas: cannot read 'x' as float\n"
    r = _run("thrm_lambda", "--bogus", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unrecognized arguments: --bogus" in r.stderr


def test_every_script_is_covered():
    assert {s for s, _ in EXPECTED} <= {p.stem for p in SWEEPS.glob("*.py")}


@pytest.mark.parametrize("script, profile", sorted(EXPECTED))
def test_dry_run_lists_the_trials(runs, script, profile):
    r, cwd = runs[(script, "--dry-run", "--profile", profile)]
    assert r.returncode == 0, r.stderr
    n = EXPECTED[(script, profile)]
    assert re.search(rf"^{script}: {n} trials \(", r.stdout, re.M), r.stdout[:500]
    listed = [ln for ln in r.stdout.splitlines() if ln.startswith("  ") and " data=" in ln]
    assert len(listed) == n
    assert len({ln.split()[0] for ln in listed}) == n          # every run name is distinct
    assert f"profile: {profile} (requested with --profile)" in r.stdout
    assert "eval attack: " in r.stdout
    assert list(cwd.iterdir()) == []                           # a dry run writes nothing


def test_dry_run_shows_the_swept_values(runs):
    r, _ = runs[("defender_eps", "--dry-run", *SWEPT[0][1])]
    assert r.returncode == 0, r.stderr
    assert "defender_eps: 2 trials" in r.stdout
    assert "pgd_at-lam6-mlp-eps0-seed0" in r.stdout and "step=0 " in r.stdout            # eps 0: step eps/4 = 0
    assert "pgd_at-lam6-mlp-eps0.05-seed0" in r.stdout and "step=0.0125 " in r.stdout
    r, _ = runs[("substandard", "--dry-run", *SWEPT[1][1])]
    assert r.returncode == 0, r.stderr
    assert "substandard: 2 trials" in r.stdout
    assert "natural-lam0-mlp-noise-seed0" in r.stdout and "variant=quality" in r.stdout


@pytest.mark.parametrize("script, args, message", BAD)
def test_bad_flag_values_are_one_line_errors(runs, script, args, message):
    r, _ = runs[(script, "--dry-run", *_bad_args(args))]
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.startswith(f"{script}: error: ") and message in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_engine_run_from_python_checks_its_options_and_dry_runs(tmp_path, monkeypatch):
    """``hyporay.engine.run``: a bad option or definition is an exception (one line) before anything starts; a dry
    run plans, starts nothing and returns an empty runs table."""
    from hyporay.config import ConfigError
    from hyporay.engine import run

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="thrm_lambda: unrecognized arguments: --lambdass 1"):
        run("thrm_lambda", profile="local", lambdass=[1])
    with pytest.raises(ConfigError, match="definition: unknown 'thrm'; known: architectures, attack_steps"):
        run("thrm", profile="local")
    with pytest.raises(ConfigError, match="--lambdas: cannot read 'x' as float"):
        run("thrm_lambda", profile="local", lambdas="0,x", dry_run=True)
    df = run("thrm_lambda", profile="local", lambdas=[0, 10], seeds=2, dry_run=True)
    assert df.empty and df.attrs["status"] == 0 and list(tmp_path.iterdir()) == []

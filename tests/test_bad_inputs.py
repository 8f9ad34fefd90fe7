"""Every bad input is one line, exit status 2, no traceback, and nothing written: config fields, CLI flags,
sweep flags and files, as a user types them (in-process: the commands' own entry points, no new interpreter)."""
from __future__ import annotations

import contextlib
import io
import os
import pickle
import runpy
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "digits_thrm.yaml"
SWEEPS = ROOT / "sweeps"


def invoke(fn, argv: list[str], cwd: Path) -> tuple[int, str, str]:
    out, err, old = io.StringIO(), io.StringIO(), Path.cwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = fn(argv)
            except SystemExit as exc:  # argparse's usage errors
                code = exc.code
    finally:
        os.chdir(old)
    return code, out.getvalue(), err.getvalue()


def hyporay(argv, cwd):
    from hyporay.cli import main

    return invoke(main, argv, cwd)


def sweep(script: str):
    from hyporay.engine import main

    defn = runpy.run_path(str(SWEEPS / f"{script}.py"), run_name="bad_input_test")["SWEEP"]
    return lambda argv: main(defn, argv, configs_dir=SWEEPS / "configs")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Damaged and foreign files, in a directory of their own (the commands run in another, empty one)."""
    d = tmp_path_factory.mktemp("files")
    (d / "empty.yaml").write_text("")
    (d / "list.yaml").write_text("- train\n- eval\n")
    (d / "bad.yaml").write_text("train: {lam: [1,\n")
    (d / "empty.pt").write_bytes(b"")
    (d / "foreign.pt").write_bytes(pickle.dumps({"a": 1}))
    torch.save({"format": 1, "weights": torch.zeros(3)}, d / "other.pt")
    from hyporay.cli import main

    good = d / "good"
    code, _, err = invoke(main, ["train", str(CONFIG), "--out", str(good), "--set", "train.epochs=1",
                                 "--set", "eval.attack.steps=1", "--set", "train.attack.steps=1", "--set",
                                 "threads=1"], d)
    assert code == 0, err
    data = (good / "checkpoint.pt").read_bytes()
    (d / "truncated.pt").write_bytes(data[: len(data) // 2])
    state = torch.load(good / "checkpoint.pt", weights_only=True)
    state["config"]["model"]["kwargs"] = {"hidden": [32]}  # the weights are 256-256: wrong shapes
    torch.save(state, d / "wrong_shape.pt")
    return d


def _cases():
    c = "{files}"
    train = ["train", str(CONFIG)]
    return [
        # config fields (hyporay train)
        ("hyporay", [*train, "--set", "model.name=resnet19"], "model.name: unknown 'resnet19'"),
        ("hyporay", [*train, "--set", "model.kwargs={hidden: -5}"], "model.kwargs: mlp cannot be built"),
        ("hyporay", [*train, "--set", "model.kwargs={hiden: 5}"], "model.kwargs: unknown option 'hiden'"),
        ("hyporay", [*train, "--set", "train.lr=.inf"], "train.lr: Input should be a finite number"),
        ("hyporay", [*train, "--set", "train.lam=.inf"], "train.lam: Input should be a finite number"),
        ("hyporay", [*train, "--set", "train.lam=.nan"], "train.lam: Input should be a finite number"),
        ("hyporay", [*train, "--set", "train.lam=-1"], "train.lam:"),
        ("hyporay", [*train, "--set", "train.attack.eps=1e9"], "train.attack.eps: 1e+09 is beyond the input range"),
        ("hyporay", [*train, "--set", "eval.attack.eps=2"], "eval.attack.eps: 2 is beyond the input range"),
        ("hyporay", [*train, "--set", "train.attack.step_size=5"], "train.attack.step_size: 5 is beyond"),
        ("hyporay", [*train, "--set", "train.attack.norm=l2", "--set", "train.attack.eps=100"],
         "train.attack.eps: 100 is beyond the input range: an l2 ball of radius > sqrt(64)"),
        ("hyporay", [*train, "--set", "train.attack.eps=-1"], "train.attack.eps:"),
        ("hyporay", [*train, "--set", "train.attack.norm=l3"], "train.attack.norm:"),
        ("hyporay", [*train, "--set", "train.lamda=3"], "train.lamda: unknown key"),
        ("hyporay", [*train, "--set", "train.trainer=sgd"], "train.trainer:"),
        ("hyporay", [*train, "--set", "train.epochs=-1"], "train.epochs:"),
        ("hyporay", [*train, "--set", "train.batch_size=0"], "train.batch_size:"),
        ("hyporay", [*train, "--set", "train.momentum=1"], "train.momentum:"),
        ("hyporay", [*train, "--set", "eval.steps_grid=[0]"], "eval.steps_grid: every value must be >= 1"),
        ("hyporay", [*train, "--set", "eval.every=0"], "eval.every:"),
        ("hyporay", [*train, "--set", "data.test_fraction=1.5"], "data.test_fraction:"),
        ("hyporay", [*train, "--set", "data.name=cifar10", "--set", "data.root=nowhere"], "dataset cifar10: not found"),
        ("hyporay", [*train, "--set", "data.name=imagenet21k"], "data.name: unknown 'imagenet21k'"),
        ("hyporay", [*train, "--set", "variant.name=dirty"], "variant.name:"),
        ("hyporay", [*train, "--set", "variant.source_model=foo"], "variant.source_model: unknown 'foo'"),
        ("hyporay", [*train, "--set", "seed=-1"], "seed:"),
        ("hyporay", [*train, "--set", "device=tpu"], "device: unknown 'tpu'"),
        ("hyporay", [*train, "--set", "threads=0"], "threads:"),
        ("hyporay", [*train, "--set", "noequals"], "--set noequals: expected key=value"),
        # files
        ("hyporay", ["train", "missing.yaml"], "config: file not found"),
        ("hyporay", ["train", f"{c}/empty.yaml"], "is empty"),
        ("hyporay", ["train", f"{c}/list.yaml"], "must hold a mapping of fields"),
        ("hyporay", ["train", f"{c}/bad.yaml"], "is not valid YAML"),
        ("hyporay", ["eval", "no/such/dir"], "checkpoint: no checkpoint.pt"),
        ("hyporay", ["eval", f"{c}/empty.pt"], "empty.pt is empty"),
        ("hyporay", ["eval", f"{c}/truncated.pt"], "truncated.pt is damaged or not a hyporay checkpoint"),
        ("hyporay", ["eval", f"{c}/foreign.pt"], "foreign.pt is damaged or not a hyporay checkpoint"),
        ("hyporay", ["eval", f"{c}/other.pt"], "other.pt is not a hyporay checkpoint (missing config"),
        ("hyporay", ["eval", f"{c}/wrong_shape.pt"], "wrong_shape.pt: its weights do not fit model mlp"),
        ("hyporay", ["audit", f"{c}/truncated.pt"], "truncated.pt is damaged"),
        ("hyporay", ["audit", f"{c}/wrong_shape.pt", "--no-transfer"], "its weights do not fit model mlp"),
        ("hyporay", ["train", str(CONFIG), "--resume", "--out", f"{c}/good", "--set", "train.attack.steps=1",
                     "--set", "train.lam=3"],
         "--resume: train.lam is 3.0 but the checkpoint was trained with 5.0"),
        ("hyporay", ["train", str(CONFIG), "--out", f"{c}/good"], "already holds a trained checkpoint.pt"),
        # CLI flags
        ("hyporay", ["eval", f"{c}/good", "--norm", "l3"], "invalid choice"),
        ("hyporay", ["eval", f"{c}/good", "--eps", "-1"], "eps: must be a number >= 0"),
        ("hyporay", ["eval", f"{c}/good", "--steps", "0"], "steps: must be an integer >= 1"),
        ("hyporay", ["eval", f"{c}/good", "--restarts", "0"], "restarts: must be an integer >= 1"),
        ("hyporay", ["eval", f"{c}/good", "--device", "cuda:7"], "device:"),
        ("hyporay", ["audit", f"{c}/good", "--subset", "-1"], "subset: must be >= 0"),
        ("hyporay", ["audit", f"{c}/good", "--steps", "0"], "steps: must be an integer >= 1"),
        ("hyporay", ["audit", f"{c}/good", "--restarts", "0"], "restarts: must be an integer >= 1"),
        ("hyporay", ["audit", f"{c}/good", "--steps-grid", "3,1"], "steps_grid: must be a non-empty ascending"),
        ("hyporay", ["frontier", "--experiment", "x"], "tracking-uri: no MLflow database at"),
        ("hyporay", ["bogus"], "invalid choice: 'bogus'"),
        ("hyporay", ["ui", "--db", "nope.db"], "--db: no MLflow database at"),
        # sweep flags (checked before Ray starts or any MLflow run is created)
        ("thrm_lambda", ["--lambdas", "x"], "--lambdas: cannot read 'x' as float"),
        ("thrm_lambda", ["--cpus-per-trial", "-1"], "--cpus-per-trial: must be > 0, got -1"),
        ("thrm_lambda", ["--cpus-per-trial", "0"], "--cpus-per-trial: must be > 0, got 0"),
        ("thrm_lambda", ["--gpu-fraction", "0"], "--gpu-fraction: a share of one GPU is in (0, 1]"),
        ("thrm_lambda", ["--gpu-fraction", "2"], "--gpu-fraction: a share of one GPU is in (0, 1], e.g. 0.5 packs two "
                                                 "trials per GPU (more per trial: --gpus-per-trial); got 2"),
        ("thrm_lambda", ["--tracking-patience", "0"], "--tracking-patience: must be > 0"),
        ("thrm_lambda", ["--storage-path", "/proc/hyporay-runs"], "--storage-path: cannot write Ray Tune's storage to "
                                                                  "/proc/hyporay-runs (/proc does not take new "
                                                                  "directories)"),
        ("thrm_lambda", ["--storage-path", "/dev/null/runs"], "--storage-path: cannot write Ray Tune's storage to "
                                                              "/dev/null/runs (/dev/null is not a directory)"),
        ("thrm_lambda", ["--gpus-per-trial", "-1"], "--gpus-per-trial: must be >= 0"),
        ("thrm_lambda", ["--max-failures", "-1"], "--max-failures: must be >= 0"),
        ("thrm_lambda", ["--seeds", "0"], "--seeds: must be >= 1"),
        ("thrm_lambda", ["--cpus-per-trial", "nan"], "--cpus-per-trial: must be finite"),
        ("thrm_lambda", ["--profile", "nope"], "profile: unknown 'nope'"),
        ("thrm_lambda", ["--set", "model.kwargs={hidden: -5}"], "model.kwargs: mlp cannot be built"),
        ("thrm_lambda", ["--set", "train.attack.eps=1e9"], "train.attack.eps: 1e+09 is beyond"),
        ("thrm_lambda", ["--set", "train.lr=.inf"], "train.lr: Input should be a finite number"),
        ("thrm_lambda", ["--set", "data.name=cifar10"], "dataset cifar10: not found"),
        ("thrm_lambda", ["--trainers", "sgd"], "train.trainer:"),
        ("thrm_lambda", ["--tracking-uri", "http://127.0.0.1:9"], "tracking-uri: cannot reach http://127.0.0.1:9"),
        ("thrm_lambda", ["--tracking-uri", "file:./mlruns"], "is a file store, refused by MLflow"),
        ("thrm_lambda", ["--tracking-uri", "sqlite:////no/such/dir/m.db"], "tracking-uri: directory /no/such/dir"),
        ("thrm_lambda", ["--resume"], "--resume: no interrupted thrm_lambda sweep"),
        ("thrm_lambda", ["--resume", "nothing-here"], "--resume: no sweep named 'nothing-here'"),
        ("defender_eps", ["--eps", "0,abc"], "--eps: cannot read 'abc' as float"),
        ("substandard", ["--variants", "dirty"], "variant.name"),
        ("architectures", ["--models", "resnet19"], "model.name: unknown 'resnet19'"),
    ]


CASES = _cases()


@pytest.mark.parametrize("cmd, argv, needle", CASES, ids=[f"{c}:{' '.join(a[1:] if c == 'hyporay' else a)[:60]}"
                                                          for c, a, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(files, tmp_path, cmd, argv, needle):
    argv = [a.replace("{files}", str(files)) for a in argv]
    before = sorted(p.name for p in files.rglob("*"))
    if cmd == "hyporay":
        code, out, err = hyporay(argv, tmp_path)
    else:
        code, out, err = invoke(sweep(cmd), ["--profile", "local", "--seeds", "1", *argv] if "--profile" not in argv
                                else ["--seeds", "1", *argv], tmp_path)
    assert code == 2, (out[-2000:], err[-2000:])
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert needle in err, err
    assert "Traceback" not in err and len(lines) <= 2, err  # argparse adds its usage line
    assert list(tmp_path.iterdir()) == []                   # nothing written where the command ran
    assert sorted(p.name for p in files.rglob("*")) == before  # and nothing changed beside the inputs


@pytest.mark.parametrize("axes, label, needle", [
    ([("train.lamda", [1.0])], "train.lam", "sweep t: axis 'train.lamda' is not a trial field; e.g. train.amp"),
    ([("train.lam", [1.0])], "train.lamb", "sweep t: label_key 'train.lamb' is not a trial field"),
])
def test_a_sweep_definition_naming_no_trial_field_is_one_line(tmp_path, axes, label, needle):
    from hyporay.engine import Axis, SweepDefinition, main

    defn = SweepDefinition("t", "a test sweep", [Axis(k, v) for k, v in axes], label_key=label)
    code, _, err = invoke(lambda argv: main(defn, argv, SWEEPS / "configs"), ["--profile", "local"], tmp_path)
    assert code == 2 and needle in err and err.count("\n") == 1 and list(tmp_path.iterdir()) == []


def test_ui_on_a_busy_port_is_one_line(files, tmp_path):
    import socket

    (tmp_path / "mlflow.db").write_bytes(b"")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, _, err = hyporay(["ui", "--port", str(port)], tmp_path)
    assert code == 2 and f"--port: {port} on 127.0.0.1 is in use" in err and err.count("\n") == 1


def test_the_refused_resume_left_the_run_as_it_was(files):
    """`--resume` with another trained field is refused before anything is written: config.yaml keeps the λ the
    weights were trained with."""
    import yaml

    assert yaml.safe_load((files / "good" / "config.yaml").read_text())["train"]["lam"] == 5.0

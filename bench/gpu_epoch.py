"""One THRM-10 ResNet-18 CIFAR-10 epoch on one GPU, measured side by side, and the GPU-hours of the paper's sweeps.

Rows: fp32 / bf16 / bf16 + channels_last / + torch.compile, host-fed vs device-resident data (seconds per 50k-image
epoch, images and image-passes per second); the other trainers and architectures at the paper profile's setting;
evaluation with 20-step attacks; k = 1, 2, 4 trials sharing the GPU as separate processes (as Ray's fractional
GPUs place them), as aggregate throughput; then the estimated GPU-hours of the Fig. 4 sweep and of
``sweeps/reproduce.py --profile paper`` from those measurements.

    python bench/gpu_epoch.py --out gpu_epoch.json            # one GPU, under 5 minutes (--budget-s)
    python bench/gpu_epoch.py --cpu-tiny --out /tmp/tiny.json  # anywhere, seconds: tiny shapes (CI runs this)

Without CUDA the tiny mode is chosen automatically. Imports only torch and hyporay's pure-torch core (attacks,
trainers, models, data, metrics; no ray, mlflow, optuna, pydantic) and works with torch >= 2.1. Inputs are
CIFAR-shaped random uint8 tensors: what an epoch costs does not depend on the pixel values. An image-pass is one
forward + backward of one image (an attack step counts as one); THRM-K and TRADES-K spend K + 2 per training image
(K attack steps + the training pass on cat(x, x')), PGD-AT-K K + 1, natural training 1.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install too

import torch  # noqa: E402

from hyporay import metrics as M  # noqa: E402
from hyporay.attacks import AttackSpec  # noqa: E402
from hyporay.data import iterate_batches  # noqa: E402
from hyporay.data.core import place  # noqa: E402
from hyporay.models import build_model  # noqa: E402
from hyporay.trainers import OptimConfig, Trainer  # noqa: E402

FORBIDDEN = ("ray", "mlflow", "optuna", "pydantic")
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
EPOCH_IMAGES, TEST_IMAGES = 50_000, 10_000

# The paper profile (sweeps/configs/paper.yaml) and its sweeps; tests/test_gpu_path.py checks these against it.
PAPER_EPOCHS, PAPER_EVAL_EVERY, PAPER_TRAIN_STEPS, PAPER_EVAL_STEPS = 110, 10, 10, 20
PAPER_LAMBDAS = (0, 1, 5, 10, 20, 40, 60, 80, 100)
PAPER_MODELS = ("mlp", "cnn", "vgg16", "resnet18", "wrn28_10")
PAPER_VARIANTS = ("naive", "noise", "mislabeling", "poisoning", "quality")
POISON_SOURCE_EPOCHS, POISON_STEPS = 10, 100  # hyporay.variants defaults: source model epochs, delusive PGD steps

# what each mode measures: shapes, batches per measurement, models, trials per GPU
MODES = {
    "gpu": dict(device="cuda", in_shape=(3, 32, 32), batch=128, steps=PAPER_TRAIN_STEPS, eval_steps=PAPER_EVAL_STEPS,
                model="resnet18", warm=3, timed=25, model_warm=2, model_timed=10, eval_n=2000, eval_targeted_n=500,
                eval_batch=512, shares=(1, 2, 4), share_timed=50, compile_backend="inductor", compile_timeout=240,
                budget=285),
    "cpu-tiny": dict(device="cpu", in_shape=(3, 8, 8), batch=8, steps=2, eval_steps=2, model="cnn", warm=1,
                     timed=2, model_warm=1, model_timed=1, eval_n=16, eval_targeted_n=8, eval_batch=8,
                     shares=(1, 2), share_timed=2, compile_backend="eager", compile_timeout=120, budget=120),
}

# (label, settings) of the THRM rows; the first is the baseline of the speed-up column
SETUPS = (
    ("fp32, host-fed", dict(amp=False, channels_last=False, compile=False, resident=False)),
    ("fp32", dict(amp=False, channels_last=False, compile=False, resident=True)),
    ("amp", dict(amp=True, channels_last=False, compile=False, resident=True)),
    ("amp + channels_last, host-fed", dict(amp=True, channels_last=True, compile=False, resident=False)),
    ("amp + channels_last", dict(amp=True, channels_last=True, compile=False, resident=True)),
    ("amp + channels_last + compile", dict(amp=True, channels_last=True, compile=True, resident=True)),
)
PAPER_SETTING = "amp + channels_last"  # sweeps/configs/paper.yaml: amp (bf16 where native), channels_last, no compile


def passes_per_image(loss: str, steps: int, lam: float = 1.0) -> int:
    """Image-passes per training image: natural 1, PGD-AT-K K + 1, TRADES-K / THRM-K K + 2 (λ = 0: natural)."""
    if loss == "natural" or (loss in ("trades", "thrm") and lam == 0):
        return 1
    return steps + 1 if loss == "pgd_at" else steps + 2


def _random_data(n: int, in_shape, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, *in_shape), generator=g, dtype=torch.uint8),
            torch.randint(0, 10, (n,), generator=g))


def _model(name: str, in_shape) -> torch.nn.Module:
    torch.manual_seed(0)
    c = in_shape[0]
    return build_model(name, in_shape=tuple(in_shape), num_classes=10, mean=CIFAR_MEAN[:c], std=CIFAR_STD[:c])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _wait_for(path: Path, timeout: float) -> None:
    end = time.time() + timeout
    while not path.exists():
        if time.time() > end:
            raise TimeoutError(f"barrier: {path} did not appear within {timeout:.0f} s")
        time.sleep(0.005)


def measure_epoch(spec: dict) -> dict:
    """Train ``spec["warm"]`` batches (cudnn autotuning, compilation), then time epochs of ``spec["timed"]`` batches.

    ``spec``: model, loss, lam, steps, batch, in_shape, device, amp, channels_last, compile (False or a backend),
    resident (data placed on the device first), warm, timed. Without ``barrier``: times one epoch and returns its
    seconds, images and settings. With ``barrier`` (a directory shared with other processes) and ``worker`` i:
    announces ``ready-i``, then for each k in ``rounds`` waits for ``go-k``, times one epoch and writes
    ``result-k-i.json`` there (trials timed together, as they share a GPU).
    """
    device = torch.device(spec["device"])
    trainer = Trainer(_model(spec["model"], spec["in_shape"]), loss=spec["loss"], lam=spec["lam"],
                      attack=AttackSpec(norm="linf", eps=8 / 255, steps=spec["steps"], step_size=2 / 255),
                      optim=OptimConfig(lr=0.01), batch_size=spec["batch"], augment=True, amp=spec["amp"],
                      channels_last=spec["channels_last"], compile=spec["compile"] or False, device=device, seed=0)
    warm = _random_data(spec["warm"] * spec["batch"], spec["in_shape"], seed=1)
    timed = _random_data(spec["timed"] * spec["batch"], spec["in_shape"], seed=2)
    if spec["resident"]:
        warm = tuple(place(t, device) for t in warm)
        timed = tuple(place(t, device) for t in timed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    trainer.train_epoch(*warm)
    warm_s = time.perf_counter() - t0

    def timed_epoch() -> dict:
        start = time.time()
        stats = trainer.train_epoch(*timed)
        end = time.time()
        return {"seconds": stats["epoch_seconds"], "images": len(timed[1]), "warm_seconds": warm_s,
                "start": start, "end": end, "finite_loss": math.isfinite(stats["train_loss"]),
                "amp_dtype": str(trainer.amp_dtype).replace("torch.", "") if spec["amp"] else "float32",
                "compiled": trainer.compiled, "compile_note": trainer.compile_note,
                "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}

    if not spec.get("barrier"):
        return timed_epoch()
    barrier, i = Path(spec["barrier"]), spec["worker"]
    (barrier / f"ready-{i}").touch()
    for k in spec["rounds"]:
        _wait_for(barrier / f"go-{k}", 600)
        tmp = barrier / f"result-{k}-{i}.tmp"
        tmp.write_text(json.dumps(timed_epoch()))
        tmp.rename(barrier / f"result-{k}-{i}.json")
    return {"rounds": list(spec["rounds"])}


def measure_eval(mode: dict, *, targeted: bool, n: int) -> dict:
    """``hyporay.metrics.evaluate`` (fp32, eager, as trials evaluate) of a fresh model on ``n`` placed images with
    the paper's eval attack (l_inf 8/255, 20 steps of 2/255); seconds per 10k test images. A fresh model gets
    ~90% wrong, so the hypocritical (and targeted) attacks run on ~90% of the points: an upper bound for trained
    models."""
    device = torch.device(mode["device"])
    model = _model(mode["model"], mode["in_shape"]).to(device).eval()
    spec = AttackSpec(norm="linf", eps=8 / 255, steps=mode["eval_steps"], step_size=2 / 255)
    x, y = (place(t, device) for t in _random_data(n, mode["in_shape"], seed=3))

    def run(k):
        batches = iterate_batches(x[:k], y[:k], mode["eval_batch"], shuffle=False, device=device)
        return M.evaluate(model, batches, spec, targeted=targeted, num_classes=10, device=device,
                          generator=torch.Generator(device=device).manual_seed(0))

    run(min(n, mode["eval_batch"]))  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    m = run(n)
    _sync(device)
    sec = time.perf_counter() - t0
    return {"seconds": sec, "images": n, "seconds_per_10k": sec * TEST_IMAGES / n,
            "wrong_fraction": m[M.N_MISCLASSIFIED] / n, "targeted": targeted}


# --- running specs in other processes ----------------------------------------------------------------------------

def _worker_cmd(spec: dict) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]


def _worker_env(mode_name: str) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if mode_name == "cpu-tiny":
        env["OMP_NUM_THREADS"] = "1"
    return env


def _parse_result(stdout: str) -> dict:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        raise RuntimeError("worker printed no RESULT line")
    return json.loads(lines[-1][len("RESULT "):])


def run_in_subprocess(spec: dict, mode_name: str, timeout: float) -> dict:
    """``measure_epoch(spec)`` in a fresh process (torch.compile's caches and threads stay out of this one)."""
    try:
        p = subprocess.run(_worker_cmd(spec), capture_output=True, text=True, timeout=timeout,
                           env=_worker_env(mode_name))
    except subprocess.TimeoutExpired:
        return {"skipped": f"did not finish within {timeout:.0f} s"}
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or ["?"])[-1]
        return {"skipped": f"worker failed (exit {p.returncode}): {tail}"}
    return _parse_result(p.stdout)


def measure_sharing(spec: dict, shares, mode_name: str, timeout: float) -> list[dict]:
    """k trials on one device at once, for each k in ``shares``: max(shares) processes start and warm up once;
    in round k the first k of them time one epoch together while the others wait. Aggregate images per second =
    k x images / (last end - first start) of the round."""
    kmax = max(shares)
    out: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="gpu-epoch-") as d:
        barrier = Path(d)
        procs = [subprocess.Popen(_worker_cmd({**spec, "barrier": d, "worker": i,
                                               "rounds": [k for k in shares if i < k]}),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=_worker_env(mode_name)) for i in range(kmax)]
        end = time.time() + timeout

        def wait(pattern: str, n: int) -> None:
            while len(list(barrier.glob(pattern))) < n:
                if time.time() > end:
                    raise TimeoutError(f"{pattern}: {n} files not there within {timeout:.0f} s")
                failed = [p.returncode for p in procs if p.poll() not in (None, 0)]
                if failed:
                    raise RuntimeError(f"a worker exited with {failed[0]}")
                time.sleep(0.01)

        try:
            wait("ready-*", kmax)
            for k in shares:
                (barrier / f"go-{k}").touch()
                wait(f"result-{k}-*.json", k)
                rs = [json.loads((barrier / f"result-{k}-{i}.json").read_text()) for i in range(k)]
                wall = max(r["end"] for r in rs) - min(r["start"] for r in rs)
                images = sum(r["images"] for r in rs)
                out.append({"k": k, "wall_seconds": wall, "images": images, "aggregate_img_per_s": images / wall,
                            "per_trial_seconds": [r["seconds"] for r in rs]})
            for p in procs:
                p.communicate(timeout=max(1.0, end - time.time()))
        except (RuntimeError, TimeoutError, subprocess.TimeoutExpired) as exc:
            for p in procs:
                p.kill()
            errs = [ln for p in procs for ln in (p.communicate()[1] or "").strip().splitlines()[-1:]]
            done = {r["k"] for r in out}
            out += [{"k": k, "skipped": f"{exc}; {errs[:1]}"[:300]} for k in shares if k not in done]
    return out


# --- estimates ---------------------------------------------------------------------------------------------------

def reproduce_trials(models=PAPER_MODELS, variants=PAPER_VARIANTS, lambdas=PAPER_LAMBDAS, model3: str = "resnet18",
                     seeds: int = 1) -> list[tuple]:
    """What ``sweeps/reproduce.py --profile paper`` trains: (seed, variant, model, trainer, λ, targeted eval) per
    trial, identical trials once. Mirrors the engine's plan of ``sweeps/reproduce.py`` (which needs pydantic, so it is not
    imported here); tests/test_gpu_path.py checks that the two agree."""
    out = []
    for seed in range(seeds):
        out += [(seed, v, m, "natural", 0.0, True) for v in variants for m in models]      # Tables 1-2, Fig. 3
        out += [(seed, v, model3, t, lam, True) for v in ("quality", "poisoning")          # Table 3
                for t, lam in (("natural", 0.0), ("pgd_at", 0.0), ("trades", 6.0))]
        # Fig. 4: TRADES/THRM over λ; λ = 0 is natural training, planned once (its run feeds both curves)
        out += [(seed, "quality", model3, t if lam else "natural", float(lam), False) for t in ("trades", "thrm")
                for lam in lambdas]
    return list(dict.fromkeys(out))


def estimate_gpu_hours(epoch_s: dict, model_nt_s: dict, eval_u: dict, eval_t: dict, speedup: float,
                       model3: str = "resnet18") -> dict:
    """GPU-hours of the Fig. 4 sweep and of the reproduce sweep (paper profile) from measured seconds.

    Args:
        epoch_s: seconds per 50k-image epoch of ``model3`` per trainer (natural, pgd_at, trades, thrm).
        model_nt_s: seconds per 50k-image natural-training epoch per architecture.
        eval_u, eval_t: ``measure_eval`` results (untargeted; with per-label targeted attacks).
        speedup: aggregate throughput of the best trials-per-GPU count over one trial (>= 1).

    Measured: every training epoch that occurs. Estimated (stated in ``assumptions``): evaluation of the other
    architectures scales like their natural-training epoch; the poisoning attack's fp32 attack-pass cost comes
    from the evaluation's; evaluation figures come from a fresh model (~90% wrong: an upper bound).
    """
    def ep(model, trainer, lam):
        if trainer in ("trades", "thrm") and lam == 0:
            trainer = "natural"
        if trainer == "natural":
            return model_nt_s[model]
        if model != model3:
            raise ValueError(f"no measurement of {trainer} on {model}")
        return epoch_s[trainer]

    def ev(model, targeted):
        e = (eval_t if targeted else eval_u)["seconds_per_10k"]
        return e * model_nt_s[model] / model_nt_s[model3]

    # the Fig. 4 sweep's trials: TRADES and THRM per λ, λ = 0 (natural training) planned once for both
    fig4_trials = list(dict.fromkeys((t if lam else "natural", lam) for t in ("trades", "thrm") for lam in PAPER_LAMBDAS))
    fig4 = sum(PAPER_EPOCHS * ep(model3, t, lam) + (PAPER_EPOCHS // PAPER_EVAL_EVERY) * ev(model3, False)
               for t, lam in fig4_trials)
    trials = reproduce_trials(model3=model3)
    repro = sum((0 if v == "naive" else PAPER_EPOCHS) * ep(m, t, lam) + ev(m, tg) for _, v, m, t, lam, tg in trials)
    # poisoning, once per architecture (cached across trials): the naturally trained source model, then the
    # 100-step delusive PGD over the 50k training images in fp32, at the eval attack's cost per attack pass
    w = eval_u["wrong_fraction"]
    eval_passes = 2 * PAPER_EVAL_STEPS + w * PAPER_EVAL_STEPS + 4 / 3   # adv + stability + hyp on D- + predictions
    attack_pass_s = eval_u["seconds_per_10k"] / TEST_IMAGES / eval_passes  # per image, model3, fp32
    poisoned = sorted({m for _, v, m, *_ in trials if v == "poisoning"})
    poison = sum(POISON_SOURCE_EPOCHS * model_nt_s[m]
                 + POISON_STEPS * EPOCH_IMAGES * attack_pass_s * model_nt_s[m] / model_nt_s[model3] for m in poisoned)
    hours = {"fig4": fig4 / 3600, "reproduce": (repro + poison) / 3600}
    return {
        "fig4_trials": len(fig4_trials), "reproduce_trials": len(trials),
        "gpu_hours_one_trial_per_gpu": hours,
        "gpu_hours_best_sharing": {k: v / max(speedup, 1.0) for k, v in hours.items()},
        "sharing_speedup": speedup,
        "assumptions": [
            f"Fig. 4: 2 trainers x {len(PAPER_LAMBDAS)} lambdas, {PAPER_EPOCHS} epochs, evaluation every "
            f"{PAPER_EVAL_EVERY} epochs ({PAPER_EPOCHS // PAPER_EVAL_EVERY}x); lambda 0 trains naturally",
            "reproduce: one evaluation per trial (targeted for Tables 1-3), Naive trials untrained",
            "evaluation of other architectures scaled by their natural-training epoch time (estimate)",
            "evaluation timed on a fresh model (~90% misclassified): an upper bound for trained models",
            f"poisoning per architecture: {POISON_SOURCE_EPOCHS} natural epochs + {POISON_STEPS}-step PGD on 50k "
            f"images at {attack_pass_s * 1e6:.1f} us per fp32 attack pass per image ({model3}, from the evaluation)",
            "trials sharing a GPU: the measured aggregate speed-up applied to training and evaluation alike",
        ],
    }


# --- the run -----------------------------------------------------------------------------------------------------

def _forbidden_imports() -> list[str]:
    return sorted({m.split(".")[0] for m in sys.modules} & set(FORBIDDEN))


def _row(label: str, spec: dict, r: dict, base_s: float | None) -> dict:
    if "skipped" in r:
        return {"setting": label, **{k: spec[k] for k in ("amp", "channels_last", "compile", "resident")}, **r}
    sec50k = r["seconds"] * EPOCH_IMAGES / r["images"]
    img_s = r["images"] / r["seconds"]
    passes = passes_per_image(spec["loss"], spec["steps"], spec["lam"])
    return {"setting": label, **{k: spec[k] for k in ("model", "loss", "amp", "channels_last", "compile", "resident")},
            "amp_dtype": r["amp_dtype"], "compiled": r["compiled"], "compile_note": r["compile_note"],
            "seconds_per_50k_epoch": sec50k, "images_per_s": img_s, "image_passes_per_s": img_s * passes,
            "speedup": (base_s / sec50k) if base_s else 1.0, "peak_gib": r["peak_gib"],
            "warm_seconds": r["warm_seconds"], "finite_loss": r["finite_loss"]}


def run(mode_name: str, out: Path, budget_s: float | None, skip_compile: bool) -> dict:
    mode = MODES[mode_name]
    t_start = time.perf_counter()
    budget = budget_s or mode["budget"]

    def left() -> float:
        return budget - (time.perf_counter() - t_start)

    stages: dict[str, float] = {}
    mark = [time.perf_counter()]

    def stage(name: str) -> None:
        now = time.perf_counter()
        stages[name] = now - mark[0]
        mark[0] = now

    device = torch.device(mode["device"])
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    base = dict(model=mode["model"], loss="thrm", lam=10.0, steps=mode["steps"], batch=mode["batch"],
                in_shape=list(mode["in_shape"]), device=mode["device"], warm=mode["warm"], timed=mode["timed"])
    result: dict = {"mode": mode_name, "device": dev_name, "torch": torch.__version__,
                    "python": platform.python_version(), "date": datetime.date.today().isoformat(),
                    "workload": f"{mode['model']} THRM-{mode['steps']} (lambda 10), batch {mode['batch']}, "
                                f"{'x'.join(map(str, mode['in_shape']))} uint8, crop+flip, l_inf 8/255",
                    "setups": [], "skipped": []}
    print(f"gpu_epoch [{mode_name}]: {dev_name} · torch {torch.__version__} · {result['workload']}", flush=True)

    # 1. the THRM rows (compile last: it may take minutes, in its own process with a timeout)
    base_s = None
    paper_spec = None
    for label, settings in SETUPS:
        spec = {**base, **settings}
        if settings["compile"]:
            if skip_compile:
                result["skipped"].append(f"{label}: --skip-compile")
                continue
            continue  # measured at the end
        if left() < 10:
            result["skipped"].append(f"{label}: time budget")
            continue
        row = _row(label, spec, measure_epoch(spec), base_s)
        base_s = base_s or row["seconds_per_50k_epoch"]
        result["setups"].append(row)
        _print_row(row)
        if label == PAPER_SETTING:
            paper_spec = spec
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if paper_spec is None:
        raise SystemExit("gpu_epoch: the paper setting was not measured (time budget too small)")
    paper_row = next(r for r in result["setups"] if r["setting"] == PAPER_SETTING)
    stage("setups")

    # 2. the other trainers on the same model, and natural training of every architecture, at the paper setting
    epoch_s = {"thrm": paper_row["seconds_per_50k_epoch"]}
    for loss in ("natural", "pgd_at", "trades"):
        spec = {**paper_spec, "loss": loss}
        r = _row(f"{PAPER_SETTING}: {loss}", spec, measure_epoch(spec), None)
        epoch_s[loss] = r["seconds_per_50k_epoch"]
    model_nt_s = {}
    for name in PAPER_MODELS:
        if name == mode["model"]:
            model_nt_s[name] = epoch_s["natural"]
            continue
        spec = {**paper_spec, "model": name, "loss": "natural", "warm": mode["model_warm"],
                "timed": mode["model_timed"]}
        model_nt_s[name] = _row(name, spec, measure_epoch(spec), None)["seconds_per_50k_epoch"]
    stage("trainers and models")
    result["trainers_seconds_per_50k_epoch"] = epoch_s
    result["natural_seconds_per_50k_epoch_by_model"] = model_nt_s
    print("  trainers (" + PAPER_SETTING + "), s per 50k epoch: "
          + ", ".join(f"{k} {v:.2f}" for k, v in epoch_s.items()), flush=True)
    print("  natural training by model, s per 50k epoch: "
          + ", ".join(f"{k} {v:.2f}" for k, v in model_nt_s.items()), flush=True)

    # 3. evaluation, as trials run it (fp32)
    eval_u = measure_eval(mode, targeted=False, n=mode["eval_n"])
    eval_t = measure_eval(mode, targeted=True, n=mode["eval_targeted_n"])
    result["eval"] = {"untargeted": eval_u, "targeted": eval_t}
    stage("evaluation")
    print(f"  evaluation (fp32, {mode['eval_steps']}-step attacks), s per 10k test images: "
          f"{eval_u['seconds_per_10k']:.2f} (wrong {eval_u['wrong_fraction']:.2f}); with per-label targeted "
          f"attacks {eval_t['seconds_per_10k']:.2f}", flush=True)

    # 4. trials sharing the device (separate processes)
    shares = []
    if left() < 40:
        result["skipped"].append("sharing: time budget")
    else:
        shares = measure_sharing({**paper_spec, "compile": False, "timed": mode["share_timed"]}, mode["shares"],
                                 mode_name, timeout=min(200.0, left() - 5))
    for s in shares:
        k = s["k"]
        print("  " + (f"{k} trial(s) per device: skipped ({s['skipped']})" if "skipped" in s else
                      f"{k} trial(s) per device: {s['aggregate_img_per_s']:.1f} images/s aggregate"), flush=True)
    one = next((s for s in shares if s["k"] == 1 and "skipped" not in s), None)
    for s in shares:
        if one and "skipped" not in s:
            s["speedup_vs_one"] = s["aggregate_img_per_s"] / one["aggregate_img_per_s"]
    result["sharing"] = shares
    stage("sharing")
    measured = [s for s in shares if "speedup_vs_one" in s]
    best = max(measured, key=lambda s: s["speedup_vs_one"]) if measured else None
    result["best_trials_per_device"] = best["k"] if best else None

    # 5. torch.compile (own process; the row is skipped with its reason if it does not finish in time)
    label, settings = SETUPS[-1]
    if not skip_compile:
        spec = {**base, **settings, "compile": mode["compile_backend"]}
        timeout = min(mode["compile_timeout"], left() - 5)
        r = run_in_subprocess(spec, mode_name, timeout) if timeout > 20 else {"skipped": "time budget"}
        row = _row(f"{label} ({mode['compile_backend']})", spec, r, base_s)
        result["setups"].append(row)
        _print_row(row)

    stage("compile")

    # 6. estimates from the measurements
    est = estimate_gpu_hours(epoch_s, model_nt_s, eval_u, eval_t, best["speedup_vs_one"] if best else 1.0,
                             model3=mode["model"] if mode["model"] in PAPER_MODELS else "resnet18")
    result["estimates"] = est
    h1, hb = est["gpu_hours_one_trial_per_gpu"], est["gpu_hours_best_sharing"]
    print(f"  estimated GPU-hours (paper setting{'' if mode_name == 'gpu' else '; tiny shapes: meaningless'}): "
          f"Fig. 4 sweep {h1['fig4']:.2f} (1 trial/GPU), {hb['fig4']:.2f} ({result['best_trials_per_device']} per "
          f"GPU); reproduce sweep ({est['reproduce_trials']} trials) {h1['reproduce']:.2f} / {hb['reproduce']:.2f}",
          flush=True)
    result["forbidden_imports"] = _forbidden_imports()
    result["stage_seconds"] = stages
    result["elapsed_seconds"] = time.perf_counter() - t_start
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"  wrote {out} ({result['elapsed_seconds']:.0f} s)", flush=True)
    return result


def _print_row(row: dict) -> None:
    if "skipped" in row:
        print(f"  {row['setting']:<44} skipped: {row['skipped']}", flush=True)
        return
    if not _print_row.header:
        print(f"  {'setting':<44} {'s/50k epoch':>11} {'images/s':>10} {'image-passes/s':>15} {'speed-up':>8}")
        _print_row.header = True
    dtype = f" [{row['amp_dtype']}]" if row["amp"] else ""
    note = "" if not row["compile"] or row["compiled"] else f"  (not compiled: {row['compile_note']})"
    print(f"  {row['setting'] + dtype:<44} {row['seconds_per_50k_epoch']:11.2f} {row['images_per_s']:10.1f} "
          f"{row['image_passes_per_s']:15.1f} {row['speedup']:7.2f}x{note}", flush=True)


_print_row.header = False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--out", default="gpu_epoch.json", help="where the JSON results go")
    ap.add_argument("--cpu-tiny", action="store_true", help="tiny shapes and a small model on CPU (automatic "
                                                            "without CUDA)")
    ap.add_argument("--budget-s", type=float, help="stop starting new measurements after this many seconds "
                                                   "(default: 285 on a GPU, 120 in the tiny mode)")
    ap.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile row")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:  # one measurement in this process: print its result as one line
        spec = json.loads(args.worker)
        if spec["device"] == "cpu":
            torch.set_num_threads(1)
        print("RESULT " + json.dumps(measure_epoch(spec)), flush=True)
        return 0
    mode = "cpu-tiny" if args.cpu_tiny or not torch.cuda.is_available() else "gpu"
    if mode == "cpu-tiny":
        torch.set_num_threads(1)
        if not args.cpu_tiny:
            print("gpu_epoch: no CUDA device: running the CPU tiny mode", flush=True)
    bad = _forbidden_imports()
    if bad:
        print(f"gpu_epoch: imported {', '.join(bad)}: the bench must run on torch and hyporay's core only",
              file=sys.stderr)
        return 1
    result = run(mode, Path(args.out), args.budget_s, args.skip_compile)
    if result["forbidden_imports"]:
        print(f"gpu_epoch: imported {', '.join(result['forbidden_imports'])} while running", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

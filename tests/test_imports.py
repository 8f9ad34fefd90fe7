"""The core never imports the orchestration libraries (architecture: "a researcher must be able to
``from hyporay.attacks import pgd`` in a notebook with nothing else running")."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = ["hyporay.attacks", "hyporay.metrics", "hyporay.trainers", "hyporay.variants", "hyporay.models",
        "hyporay.data", "hyporay.audit"]
HEAVY = ("ray", "mlflow", "optuna")


def test_core_modules_import_no_ray_mlflow_or_optuna():
    """Guards the layering: importing (and using) the core in a fresh interpreter loads no ray, mlflow or optuna
    module, directly or through a dependency; read from sys.modules, so indirect imports count too."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {CORE!r}:\n"
        "    importlib.import_module(name)\n"
        "import torch\n"
        "from hyporay.attacks import pgd\n"
        "from hyporay.models import build_model\n"
        "m = build_model('mlp', in_shape=(1, 8, 8), num_classes=10, mean=(0.5,), std=(0.5,))\n"
        "pgd(m, torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), eps=0.1, step_size=0.05, steps=1)\n"
        f"print(json.dumps(sorted(n for n in sys.modules if n.split('.')[0] in {HEAVY!r})))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    loaded = json.loads(r.stdout.strip().splitlines()[-1])
    assert loaded == [], f"the core pulled in {loaded}"


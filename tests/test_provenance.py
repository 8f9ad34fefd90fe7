"""Where a number came from: the code that ran (commit, dirty tree) and the exact trial configuration."""
from __future__ import annotations

import subprocess
from argparse import Namespace
from pathlib import Path

import pytest

from hyporay import provenance as P
from hyporay.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_code_provenance_matches_git():
    prov = P.code()
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True,
                                text=True).stdout.strip())
    assert prov[P.COMMIT] == head.strip()
    assert prov[P.DIRTY] == ("true" if dirty else "false")
    assert (len(prov[P.DIFF]) == 64) == dirty
    assert P.is_clean(prov) == (not dirty)
    assert P.describe(prov).startswith(f"commit {head.strip()[:12]}")


def test_config_hash_ignores_placement_and_sees_everything_else():
    a = load_config({"seed": 1}).model_dump()
    moved = load_config({"seed": 1, "device": "cpu", "threads": 3, "data": {"root": "/elsewhere"}}).model_dump()
    assert P.config_hash(a) == P.config_hash(moved)
    for change in ({"seed": 2}, {"train": {"lam": 1.0}}, {"eval": {"attack": {"steps": 5}}},
                   {"data": {"split_seed": "trial"}}):
        assert P.config_hash(load_config({"seed": 1} | change).model_dump()) != P.config_hash(a), change
    assert P.plan_hash([a, moved]) == P.plan_hash([moved, a])


def test_split_seed_trial_follows_the_seed():
    from hyporay.engine.trials import data_key
    from hyporay.experiment import load_trial_data

    fixed = [load_config({"seed": s}) for s in (0, 1)]
    per_seed = [load_config({"seed": s, "data": {"split_seed": "trial"}}) for s in (0, 1)]
    assert fixed[0].data_seed() == fixed[1].data_seed() == 0
    assert [c.data_seed() for c in per_seed] == [0, 1]
    a, b = (load_trial_data(c) for c in per_seed)
    assert not (a.y_test.shape == b.y_test.shape and bool((a.x_test == b.x_test).all()))
    assert data_key(per_seed[0].model_dump()) != data_key(per_seed[1].model_dump())
    assert data_key(fixed[0].model_dump()) == data_key(fixed[1].model_dump())
    with pytest.raises(ConfigError, match="data.split_seed: must be an integer >= 0 or 'trial'"):
        load_config({"data": {"split_seed": -1}})


def test_imports_register_names_before_they_are_checked(tmp_path):
    mod = tmp_path / "reg.py"
    mod.write_text("from hyporay.models import register_model\nfrom hyporay.models.small import mlp\n"
                   "register_model('t_imported_model')(mlp)\n")
    cfg = load_config({"imports": [str(mod)], "model": {"name": "t_imported_model"}})
    assert cfg.model.name == "t_imported_model"
    with pytest.raises(ConfigError, match=r"^imports: no file .*nowhere.py$"):
        load_config({"imports": [str(tmp_path / "nowhere.py")]})
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ConfigError, match=r"imports: cannot import .*broken.py \(RuntimeError: boom\)"):
        load_config({"imports": [str(tmp_path / "broken.py")]})


def test_resume_hint_is_the_command_that_ran(monkeypatch, tmp_path):
    from hyporay.engine.publish import resume_command

    monkeypatch.setattr("sys.argv", ["my dir/my_sweep.py", "--profile", "local"])
    args = Namespace(storage_path="/shared/runs", tracking_uri=None)
    monkeypatch.setattr("sys.executable", "/usr/somewhere/bin/python3")
    assert resume_command("s-1", args) == "python 'my dir/my_sweep.py' --resume s-1 --storage-path /shared/runs"
    # the project's own environment, run from the project root: the hint names it (a bare python may lack torch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.executable", str(tmp_path / ".venv" / "bin" / "python"))
    assert resume_command("s-1", args) == (".venv/bin/python 'my dir/my_sweep.py' --resume s-1 "
                                           "--storage-path /shared/runs")


def test_profile_by_path_and_its_errors(tmp_path):
    from hyporay.engine.definition import load_profile, profile_name

    p = tmp_path / "mine.yaml"
    p.write_text("seeds: 2\ntrial: {name: x}\n")
    assert load_profile(tmp_path, str(p))["seeds"] == 2 and profile_name(str(p)) == "mine"
    with pytest.raises(ConfigError, match="profile: no file"):
        load_profile(tmp_path, str(tmp_path / "missing.yaml"))
    (tmp_path / "bad.yaml").write_text("seeds: [1,\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_profile(tmp_path, str(tmp_path / "bad.yaml"))


def test_machine_provenance_torch_cpu_threads_next_to_the_commit():
    import torch

    prov = P.of_trial(load_config({"seed": 1, "threads": 3}).model_dump())
    assert prov[P.TORCH] == torch.__version__ and type(prov[P.TORCH]) is str and prov[P.THREADS] == "3"
    assert prov[P.CPU] == P.cpu_model() and prov[P.CPU].strip() and "\n" not in prov[P.CPU]
    assert prov[P.COMMIT] == P.code()[P.COMMIT]       # next to the commit, in the same record
    # threads unset (0): the count torch runs with in this process
    assert P.of_trial(load_config({"seed": 1}).model_dump())[P.THREADS] == str(torch.get_num_threads())
    # the machine is not part of what a trial computes: the config hash ignores it
    assert prov[P.CONFIG] == P.config_hash(load_config({"seed": 1, "threads": 1}).model_dump())
    assert P.describe_machine(prov) == f"torch {torch.__version__}, {prov[P.CPU]}, 3 threads"
    assert P.describe_machine({P.THREADS: "1"}) == "1 thread" and P.describe_machine({}) == "unknown machine"


def test_a_cuda_trial_records_its_gpu_and_a_cpu_trial_none(monkeypatch):
    """Bit for bit holds on the same GPU and CUDA build only, so a CUDA trial names both (this machine has no GPU:
    torch.cuda's three answers are stood in for; the rest is the real code path)."""
    import torch

    assert P.GPU not in P.of_trial(load_config({"seed": 1, "device": "cpu"}).model_dump())
    assert P.GPU not in P.of_trial(load_config({"seed": 1}).model_dump()) or torch.cuda.is_available()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"NVIDIA H200 #{i}")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    for device, want in (("auto", "NVIDIA H200 #0, CUDA 13.0"), ("cuda:1", "NVIDIA H200 #1, CUDA 13.0"),
                         ("cpu", None)):
        prov = P.of_trial(load_config({"seed": 1, "device": device, "threads": 1}).model_dump())
        assert prov.get(P.GPU) == want, device
    prov = P.of_trial(load_config({"seed": 1, "device": "cuda", "threads": 1}).model_dump())
    assert P.describe_machine(prov) == f"torch {torch.__version__}, {prov[P.CPU]}, NVIDIA H200 #0, CUDA 13.0, 1 thread"

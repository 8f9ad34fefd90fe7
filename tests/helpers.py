"""Small helpers the tests share: tiny models and a plain SGD fit on in-memory tensors."""
from __future__ import annotations

import os

import torch
from torch import nn


def sweep_env() -> dict:
    """Environment for sweep subprocesses: a local Ray and the local SQLite store, whatever the developer's shell
    exports (a cluster address, a tracking server, remote storage). RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER is removed
    too: binding the local Ray to 127.0.0.1 is the sweep's own job, as on a user's machine."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", MLFLOW_DISABLE_TELEMETRY="true",
               DO_NOT_TRACK="1")
    for var in ("MLFLOW_TRACKING_URI", "HYPORAY_STORAGE_PATH", "RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):
        env.pop(var, None)
    return env


def machine_slack() -> float:
    """How many times slower than idle this machine runs now: its 1-minute load average per core, at least 1 and at
    most 6 (a test's own processes count too: a busy 2-core machine gets more time than an idle 16-core one)."""
    return min(6.0, max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1)))


def patience(seconds: float) -> float:
    """A timeout of ``seconds`` on an idle machine, sized for this one as it is now (``machine_slack``)."""
    return seconds * machine_slack()


def tiny_model(name: str, ds, seed: int) -> nn.Module:
    """A registry model sized for ``ds``, initialised from ``seed``."""
    from hyporay.models import build_model

    torch.manual_seed(seed)
    return build_model(name, in_shape=ds.in_shape, num_classes=ds.num_classes, mean=ds.mean, std=ds.std)


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float = 0.05, seed: int = 0):
    """Plain natural training (SGD, momentum 0.9, batch 64); returns the model in eval mode, no .grad left."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    opt.zero_grad(set_to_none=True)
    return model.eval()


def process_tree(root: int) -> set[int]:
    """``root`` and every live descendant (tools/stress.py's ``descendants``: one /proc walk for tests and tool)."""
    return {root} | load_script("tools/stress.py").descendants(root)


def _hex_addr(h: str) -> str:
    import ipaddress

    raw = bytes.fromhex(h)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return str(ipaddress.IPv6Address(words))


def listening_sockets(pids: set[int]) -> list[tuple[str, int, int]]:
    """(address, port, pid) of every TCP socket in LISTEN state held by one of ``pids`` (from /proc, no tools)."""
    inode_pid: dict[str, int] = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if link.startswith("socket:["):
                    inode_pid[link[8:-1]] = pid
        except OSError:
            continue
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] != "0A" or cols[9] not in inode_pid:  # 0A: LISTEN
                continue
            addr, port = cols[1].split(":")
            out.append((_hex_addr(addr), int(port, 16), inode_pid[cols[9]]))
    return out


def run_on_a_training_model(model: nn.Module, attack):
    """``attack()`` on ``model`` left in train mode with one BatchNorm deliberately in eval mode and one parameter
    deliberately frozen; asserts the attack left every module's mode, every requires_grad flag, every buffer
    (BatchNorm running statistics) and every .grad as it found them. Returns what ``attack()`` returned."""
    model.train()
    frozen = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    frozen.eval()  # a sub-module deliberately in eval mode must stay so
    first = next(model.parameters())
    first.requires_grad_(False)  # a deliberately frozen parameter must stay frozen
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        out = attack()
        # the attack ran in eval mode: no BatchNorm running statistic moved
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in buffers.items())
        assert model.training and not frozen.training
        assert all(m.training for m in model.modules() if m is not frozen)
        assert not first.requires_grad
        assert all(p.requires_grad for p in model.parameters() if p is not first)
        assert all(p.grad is None for p in model.parameters())
    finally:
        first.requires_grad_(True)
        model.eval()
    return out


def assert_in_ball_and_box(x_adv, x, eps: float, norm: str) -> None:
    """x' has x's shape and dtype, no graph, lies in [0,1] and in the eps-ball around x, and moved somewhere."""
    from hyporay.attacks import THREAT_MODELS

    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    size = THREAT_MODELS[norm].norm(x_adv - x)
    assert (size <= eps + 1e-6).all()
    assert (size > 1e-3).any(), "the attack never moved"



def loss_forward_inputs(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor, ctx):
    """Run ``loss_fn(model, x, y, ctx)`` and capture the batches its own forwards saw (grad enabled, input not
    requiring grad: not the inner attack's forwards). Returns ((loss, logits), list of the captured batches)."""
    seen = []

    def hook(mod, inp):
        if torch.is_grad_enabled() and not inp[0].requires_grad:
            seen.append(inp[0].detach().clone())

    handle = model.register_forward_pre_hook(hook)
    try:
        out = loss_fn(model, x, y, ctx)
    finally:
        handle.remove()
    return out, seen


def load_script(relpath: str):
    """Import a script of the checkout (e.g. ``tools/gmm_figure2.py``) as a module, to call its ``main``."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod

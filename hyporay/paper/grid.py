"""The reproduction's grid: the trials of the paper's four parts, each tagged with the parts it serves when it is
planned (the report reads the tags; it never re-derives them).

- ``t12``: Tables 1-2, natural training on the Naive / Noise / Mislabeling / Poisoning / Quality sets x the
  profile's architectures, with the per-label targeted attacks (Fig. 3);
- ``t3``: Table 3, NT, PGD-AT and TRADES (λ = 6) on Quality and Poisoning with the profile's model (targeted too);
- ``fig3``: every trial with the targeted attacks;
- ``fig4``: TRADES vs THRM over the λ grid on Quality with the profile's model (λ = 0: natural training, once).
Light at import (the sweep script's ``--help`` stays fast).
"""
from __future__ import annotations

T3_VARIANTS = ("quality", "poisoning")
T3_TRAINERS = (("natural", 0.0), ("pgd_at", 0.0), ("trades", 6.0))   # Table 3: TRADES with λ = 6
FIG4_TRAINERS = ("trades", "thrm")
SUBSTANDARD = ("naive", "noise", "mislabeling", "poisoning")
N_BOOT = 2000


def paper_exceptions(over: dict, variant: str, model: str) -> dict:
    """Reference §4: MLP lr 0.01; Noise/Mislabeling: weight decay 0, no augmentation; VGG-16 there lr 0.01."""
    train = over.setdefault("train", {})
    if model == "mlp":
        train["lr"] = 0.01
    if variant in ("noise", "mislabeling"):
        train["weight_decay"] = 0.0
        train["augment"] = False
        if model == "vgg16":
            train["lr"] = 0.01
    return over


def grid(base: dict, values: dict, seeds: list[int], profile: str) -> list[tuple[dict, dict]]:
    """(trial, tags) of all parts (see the module doc). Table 3 and Fig. 4 use the profile's trial model; every
    trial is evaluated once, after its last epoch."""
    from hyporay.config import load_config, merge
    from hyporay.tracking.tags import CURVES_TAG, PARTS_TAG

    cfg = load_config(base)
    epochs, model3 = cfg.train.epochs, cfg.model.name
    once = {"eval": {"every": max(1, epochs)}}
    out = []

    def add(over: dict, variant: str, model: str, parts: list[str], curves: tuple[str, ...] = ()) -> None:
        if profile == "paper":
            over = paper_exceptions(over, variant, model)
        tags = {PARTS_TAG: ",".join(parts)} | ({CURVES_TAG: ",".join(curves)} if curves else {})
        out.append((merge(merge(base, once), over), tags))

    for seed in seeds:
        for v in values["variant.name"]:
            for m in values["model.name"]:
                add({"seed": seed, "variant": {"name": v}, "model": {"name": m},
                     "train": {"trainer": "natural", "lam": 0.0}, "eval": {"targeted": True}}, v, m, ["t12", "fig3"])
        for v in T3_VARIANTS:
            for trainer, lam in T3_TRAINERS:
                add({"seed": seed, "variant": {"name": v}, "model": {"name": model3},
                     "train": {"trainer": trainer, "lam": lam}, "eval": {"targeted": True}}, v, model3,
                    ["t3", "fig3"])
        for trainer in FIG4_TRAINERS:
            for lam in values["train.lam"]:
                add({"seed": seed, "variant": {"name": "quality"}, "model": {"name": model3},
                     "train": {"trainer": trainer, "lam": float(lam)}, "eval": {"targeted": False}}, "quality", model3,
                    ["fig4"], (trainer,))
    return out


def options(p) -> None:
    p.add_argument("--out", help="report directory (default docs/results/<profile>)")
    p.add_argument("--bootstrap", type=int, default=N_BOOT, help="bootstrap resamples of the intervals")

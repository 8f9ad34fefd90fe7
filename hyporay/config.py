"""Typed trial configuration, loaded from YAML, validated before any work with one-line errors.

Every field error reads ``<dotted.field>: <what is wrong>; <what is allowed>``, e.g.
``train.lam: must be >= 0, got -1`` or ``model.name: unknown 'resnet19'; known: cnn, mlp, ...``.
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

from hyporay.attacks import AttackSpec
from hyporay.dotted import flatten
from hyporay.trainers import LOSSES


class ConfigError(ValueError):
    """A user error in a configuration: one line naming the field and what is allowed."""


def _one_of(value: str, known: list[str]) -> str:
    """``value`` if it is registered, else ``ValueError("unknown 'x'; known: a, b, ...")`` (the field is named by
    ``_format``)."""
    if value not in known:
        raise ValueError(f"unknown {value!r}; known: {', '.join(known)}")
    return value


class _Strict(BaseModel):
    # allow_inf_nan=False: `train.lr=.inf` or `train.lam=.nan` is a typo, never a setting
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# The attack settings of a trial are ``hyporay.attacks.AttackSpec`` itself (one shape for a threat model): pydantic
# validates its fields by their annotations, AttackSpec's own checks run on construction, and these add what only a
# config knows: the default steps of its use (the paper trains with 10 steps, evaluates with 20) and that an l_inf
# radius above 1 is the whole [0,1] box, i.e. a typo. (An l_2 radius is checked against the data's dimension once it
# is known: see TrialConfig.check_against_data.)
ATTACK_FIELDS = tuple(f.name for f in dataclasses.fields(AttackSpec))


def _attack_defaults(steps: int):
    def fill(raw):
        return {"steps": steps, **raw} if isinstance(raw, dict) else raw
    return fill


def _inside_the_box(spec: AttackSpec) -> AttackSpec:
    if spec.norm == "linf":
        for name in ("eps", "step_size"):
            v = getattr(spec, name)
            if v is not None and v > 1:
                what = "radius" if name == "eps" else "step"
                raise ValueError(f"{name}: {v:g} is beyond the input range [0,1] (an l_inf {what} > 1 spans every "
                                 "image); pixel units, e.g. 8/255 = 0.0314")
    return spec


TrainAttack = Annotated[AttackSpec, BeforeValidator(_attack_defaults(10)), AfterValidator(_inside_the_box)]
EvalAttack = Annotated[AttackSpec, BeforeValidator(_attack_defaults(20)), AfterValidator(_inside_the_box)]


class DataConfig(_Strict):
    name: str = "digits"
    root: str = "data"
    download: bool = False
    subset_train: int | None = Field(None, ge=1)
    subset_test: int | None = Field(None, ge=1)
    test_fraction: float = Field(0.3, gt=0, lt=1)
    split_seed: int | Literal["trial"] = Field(0, description="seed of the train/test split and subsets: a number "
                                               "(fixed across trial seeds, so every trial of a sweep sees the same "
                                               "test set) or 'trial' (the trial's seed: a split per seed)")
    cache_dir: str | None = Field(None, description="generated training sets; None = <root>/hyporay-cache")

    @field_validator("split_seed")
    @classmethod
    def _split_seed(cls, v):
        if isinstance(v, int) and v < 0:
            raise ValueError(f"must be an integer >= 0 or 'trial', got {v}")
        return v

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        from hyporay.data import list_datasets

        return _one_of(v, list_datasets())


class ModelConfig(_Strict):
    name: str = "mlp"
    kwargs: dict[str, Any] = Field(default_factory=dict, description="options of the architecture's factory")

    @field_validator("name")
    @classmethod
    def _known_model(cls, v: str) -> str:
        from hyporay.models import list_models

        return _one_of(v, list_models())

    @model_validator(mode="after")
    def _known_options(self) -> ModelConfig:
        # names now; values when the model is built on the data's shape (hyporay.models.build_model)
        from hyporay.models import model_options

        known = model_options(self.name)
        unknown = sorted(set(self.kwargs) - set(known)) if known is not None else []
        if unknown:
            raise ValueError(f"kwargs: unknown option {unknown[0]!r} of model {self.name}; known: "
                             f"{', '.join(known) or '(none)'}")
        return self


class VariantConfig(_Strict):
    """Training-set quality (the paper's substandard models); poisoning settings from reference §5."""

    name: Literal["quality", "naive", "noise", "mislabeling", "poisoning"] = "quality"
    method: Literal["p1", "p2", "p3", "p4", "p5"] = "p1"
    eps: float | None = Field(None, ge=0, description="None = the training attack's eps")
    norm: Literal["linf", "l2"] | None = Field(None, description="None = the training attack's norm")
    steps: int = Field(100, ge=1)
    source_model: str | None = Field(None, description="naturally trained source model; None = model.name")
    source_epochs: int = Field(10, ge=1)
    source_lr: float = Field(0.05, gt=0)

    @field_validator("source_model")
    @classmethod
    def _known_source_model(cls, v: str | None) -> str | None:
        from hyporay.models import list_models

        return v if v is None else _one_of(v, list_models())


class TrainConfig(_Strict):
    trainer: Literal[tuple(sorted(LOSSES))] = "natural"  # type: ignore[valid-type]
    lam: float = Field(0.0, ge=0, description="λ of TRADES/THRM")
    epochs: int = Field(10, ge=0)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.1, gt=0)
    lr_large_lambda: float | None = Field(None, gt=0, description="lr used when lam >= 10 (paper: 0.05)")
    momentum: float = Field(0.9, ge=0, lt=1)
    optimizer: Literal["sgd", "adam"] = Field("sgd", description="sgd (the paper's) | adam (betas (momentum, "
                                              "0.999); the l_inf-dist net's)")
    weight_decay: float = Field(5e-4, ge=0)
    milestones: list[int] = Field(default_factory=list)
    gamma: float = Field(0.1, gt=0)
    augment: bool = False
    amp: bool = False
    amp_dtype: Literal["auto", "bfloat16", "float16"] = Field(
        "auto", description="autocast dtype; auto = bfloat16 where native (CPU, CUDA compute capability >= 8), "
                            "else float16 with a GradScaler")
    channels_last: bool = False
    compile: bool = Field(False, description="torch.compile the model for training; drops each epoch's last "
                                             "partial batch (static shapes); one logged line and eager "
                                             "training where compilation is unavailable")
    concat_forward: bool = Field(True, description="one forward on cat(x, x') (False-Friends code)")
    attack: TrainAttack = Field(default_factory=lambda: AttackSpec(steps=10))

    @property
    def effective_lr(self) -> float:
        return self.lr_large_lambda if (self.lr_large_lambda and self.lam >= 10) else self.lr


class EvalConfig(_Strict):
    every: int = Field(1, ge=1, description="evaluate every N epochs (and always after the last)")
    batch_size: int = Field(512, ge=1)
    targeted: bool = Field(False, description="also per-label targeted success on D- (Fig. 3)")
    attack: EvalAttack = Field(default_factory=lambda: AttackSpec(steps=20))
    steps_grid: list[int] = Field(default_factory=list, description="after the last epoch, also evaluate with "
                                  "K steps (1 restart) for each K: metrics steps_K/<metric>")
    restarts_grid: list[int] = Field(default_factory=list, description="after the last epoch, also evaluate "
                                     "with R restarts (the eval attack's steps): metrics restarts_R/<metric>")
    certify: Literal["none", "ibp", "crown-ibp", "crown"] = Field(
        "none", description="also certified upper bounds of R_hyp(D-) and R_adv(D+) at the eval attack's eps and "
        "norm (hyporay.certify): ibp (cheap, loose) | crown-ibp | crown (tightest, costliest)")

    @field_validator("steps_grid", "restarts_grid")
    @classmethod
    def _grid(cls, v: list[int]) -> list[int]:
        bad = [k for k in v if k < 1]
        if bad:
            raise ValueError(f"every value must be >= 1, got {bad[0]}")
        return v


class TrialConfig(_Strict):
    imports: list[str] = Field(default_factory=list, description="modules (names or .py paths) that register your "
                               "own data sets / models; imported before the names are checked, in every process")
    name: str = "trial"
    seed: int = Field(0, ge=0)
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads; None = leave as is")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    variant: VariantConfig = Field(default_factory=VariantConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="before")
    @classmethod
    def _import_plugins(cls, data):
        # before the nested configs check data.name / model.name against the registries
        if isinstance(data, dict) and data.get("imports"):
            from hyporay.plugins import import_plugins

            imports = data["imports"]
            if not isinstance(imports, list) or not all(isinstance(i, str) for i in imports):
                raise ValueError(f"imports: must be a list of module names or .py paths, got {imports!r}")
            import_plugins(imports)
        return data

    def data_seed(self) -> int:
        """The seed of the train/test split and subsets (``data.split_seed``, or the trial's seed for 'trial')."""
        return self.seed if self.data.split_seed == "trial" else int(self.data.split_seed)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v == "auto" or v == "cpu" or v == "cuda" or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError(f"unknown {v!r}; allowed: auto, cpu, cuda, cuda:N")

    def flat(self) -> dict[str, Any]:
        """Dotted-key view of the whole config (MLflow params, tables)."""
        return flatten(self.model_dump())


def _format(err: ValidationError) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"])
    if e["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        return f"{loc}: unknown key; known: {', '.join(_known_keys(e['loc'][:-1]))}"
    msg = e["msg"].removeprefix("Value error, ")
    if not loc or msg.startswith(loc + ":"):  # cross-field validators already name their field
        return msg
    head = msg.split(":", 1)[0]
    if e["type"] == "value_error" and head.isidentifier() and head in _field_names(e["loc"]):
        return f"{loc}.{msg}"  # a model validator naming one of its own fields: train.attack + eps: ...
    if e["type"] == "value_error":  # our validators already show the offending value
        return f"{loc}: {msg}"
    got = e.get("input")
    shown = "" if isinstance(got, (dict, list)) or e["type"] == "missing" else f" (got {got!r})"
    return f"{loc}: {msg}{shown}" if loc else f"{msg}{shown}"


def _field_names(path: tuple) -> list[str]:
    try:
        return _known_keys(path)
    except (KeyError, AttributeError):
        return []


def _known_keys(path: tuple) -> list[str]:
    cls: type[BaseModel] = TrialConfig
    for part in path:
        ann = cls.model_fields[part].annotation
        if ann is AttackSpec:
            return list(ATTACK_FIELDS)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        cls = ann
    return list(cls.model_fields)


def parse_overrides(pairs: list[str]) -> dict:
    """``["train.lam=5", "model.name=cnn"]`` -> nested dict; values parsed as YAML scalars."""
    out: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set {pair}: expected key=value, e.g. train.lam=5")
        key, raw = pair.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(raw)
    return out


def merge(base: dict, over: dict) -> dict:
    """Deep-merge ``over`` into a copy of ``base``."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(source: TrialConfig | dict | str | Path | None = None, overrides: list[str] | dict | None = None
                ) -> TrialConfig:
    """Build a validated ``TrialConfig`` from a YAML path, a dict or a config, plus overrides.

    Raises ``ConfigError`` (one line) on any invalid field, unknown key or unreadable file.
    """
    if isinstance(source, TrialConfig):
        data = source.model_dump()
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config: file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"config: {path} is not valid YAML ({str(exc).splitlines()[0]})") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config: cannot read {path} ({type(exc).__name__})") from None
        if data is None or data == {}:
            raise ConfigError(f"config: {path} is empty; give the trial's fields (see configs/digits_thrm.yaml)")
        if not isinstance(data, dict):
            raise ConfigError(f"config: {path} must hold a mapping of fields, got {type(data).__name__}")
        if isinstance(data.get("trial"), dict):  # a sweep profile (sweeps/configs/*.yaml): its trial section
            data = data["trial"]
    else:
        data = dict(source or {})
    if overrides:
        data = merge(data, parse_overrides(overrides) if isinstance(overrides, list) else overrides)
    try:
        return TrialConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format(err)) from None

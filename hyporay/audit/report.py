"""The audit's result: one row per check (``CheckResult``), the report (``AuditReport``) as text, Markdown and
strict JSON, and the check names in report order. Torch-free (the command line reads them for --help)."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

PASS, FLAG, SKIPPED = "pass", "flag", "skipped"

CHECK_DEGENERATE = "model_degenerate"
CHECK_EPS0 = "eps0_clean"
CHECK_BATCH = "batch_independence"
CHECK_STATE = "state_unchanged"
CHECK_CURVE = "curve"
CHECK_STEPS = "convergence_steps"
CHECK_RESTARTS = "convergence_restarts"
CHECK_FGSM = "pgd_vs_fgsm"
CHECK_TRANSFER = "transfer"
CHECK_GRADIENT = "gradient_health"
CHECK_THM44 = "theorem_4_4"
CHECK_THM45 = "theorem_4_5"
CHECK_APGD = "apgd_vs_pgd"
CHECK_CERTIFIED = "certified_bound"
CHECK_SMUGGLING = "smuggling_gap"
ADV, HYP = "adversarial", "hypocritical"

#: every row of a report, in order (``<check>/<direction>`` for the checks run in both directions)
CHECKS = (CHECK_EPS0, CHECK_BATCH, f"{CHECK_CURVE}/{ADV}", f"{CHECK_CURVE}/{HYP}", f"{CHECK_STEPS}/{ADV}",
          f"{CHECK_STEPS}/{HYP}", f"{CHECK_RESTARTS}/{ADV}", f"{CHECK_RESTARTS}/{HYP}", f"{CHECK_FGSM}/{ADV}",
          f"{CHECK_FGSM}/{HYP}", f"{CHECK_TRANSFER}/{ADV}", f"{CHECK_TRANSFER}/{HYP}", CHECK_GRADIENT,
          CHECK_THM44, CHECK_THM45, f"{CHECK_APGD}/{ADV}", f"{CHECK_APGD}/{HYP}", f"{CHECK_CERTIFIED}/{HYP}",
          f"{CHECK_CERTIFIED}/{ADV}", CHECK_SMUGGLING, CHECK_STATE, CHECK_DEGENERATE)


@dataclass
class CheckResult:
    """One row of the audit: ``figure`` is a short human-readable summary, ``data`` every number behind it."""

    check: str
    figure: str
    verdict: str
    reason: str
    data: dict = field(default_factory=dict)


@dataclass
class AuditReport:
    """The audit of one model: rows in ``CHECKS`` order plus the settings they were measured with."""

    rows: list[CheckResult]
    spec: dict
    tolerances: dict
    settings: dict
    metrics: dict
    n_examples: int
    num_classes: int
    seconds: float = 0.0

    @property
    def flagged(self) -> list[CheckResult]:
        return [r for r in self.rows if r.verdict == FLAG]

    @property
    def passed(self) -> bool:
        return not self.flagged

    @property
    def verdict(self) -> str:
        return PASS if self.passed else FLAG

    def row(self, check: str) -> CheckResult:
        for r in self.rows:
            if r.check == check:
                return r
        raise KeyError(f"check: unknown {check!r}; known: {', '.join(r.check for r in self.rows)}")

    def summary_line(self) -> str:
        """``audit: pass`` or ``audit: flag (N checks)``."""
        n = len(self.flagged)
        return "audit: pass" if not n else f"audit: flag ({n} check{'s' if n != 1 else ''})"

    def to_dict(self) -> dict:
        return _finite({"verdict": self.verdict, "n_flagged": len(self.flagged), "n_examples": self.n_examples,
                        "num_classes": self.num_classes, "spec": self.spec, "tolerances": self.tolerances,
                        "settings": self.settings, "metrics": self.metrics, "seconds": self.seconds,
                        "checks": [asdict(r) for r in self.rows]})

    def to_json(self, indent: int | None = 2) -> str:
        """Strict JSON (non-finite numbers as null) with every figure, curves and grids included."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def _cells(self) -> list[tuple[str, str, str]]:
        return [(r.check, r.figure, r.verdict + (f": {r.reason}" if r.reason else "")) for r in self.rows]

    def header(self) -> str:
        from hyporay.attacks import AttackSpec

        return (f"audit of {self.n_examples} examples, K={self.num_classes}, attack: "
                f"{AttackSpec(**self.spec).describe()}")

    def to_text(self) -> str:
        """A plain-text table (check, figure, verdict with reason) and the closing summary line."""
        cells = [("check", "figure", "verdict")] + self._cells()
        w0 = max(len(c[0]) for c in cells)
        w1 = max(len(c[1]) for c in cells)
        lines = [self.header(), ""]
        for i, (a, b, c) in enumerate(cells):
            lines.append(f"{a:<{w0}s}  {b:<{w1}s}  {c}")
            if i == 0:
                lines.append(f"{'-' * w0}  {'-' * w1}  {'-' * 7}")
        lines += ["", self.summary_line()]
        return "\n".join(lines)

    def to_markdown(self) -> str:
        def esc(s: str) -> str:
            return s.replace("|", "\\|")

        lines = [f"**{esc(self.header())}**", "", "| check | figure | verdict | reason |", "|---|---|---|---|"]
        lines += [f"| {esc(r.check)} | {esc(r.figure)} | {r.verdict} | {esc(r.reason)} |" for r in self.rows]
        lines += ["", f"**{self.summary_line()}**", ""]
        return "\n".join(lines)


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if hasattr(obj, "tolist"):  # a tensor
        return _finite(obj.tolist())
    return obj



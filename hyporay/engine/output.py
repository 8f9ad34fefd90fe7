"""What the engine prints and how it names commands a user can retype: ``say`` (one flushed line), ``command_line``
(this process's command, runnable as printed from the same directory) and the one ``resume_command`` of grids and
studies. Dependency-free, below every plan."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path


def say(msg: str = "") -> None:
    print(msg, flush=True)


def interpreter() -> str:
    """How to call this Python from the current directory: ``.venv/bin/python`` for the project's own environment
    (a bare ``python`` there may lack hyporay's packages, or not exist), else ``python``."""
    exe = Path(sys.executable)
    try:
        rel = exe.relative_to(Path.cwd())
    except ValueError:
        return "python"
    return str(rel) if len(rel.parts) > 1 else f"./{rel}"


def command_line(argv: list[str] | None = None) -> str:
    """The command this process was started with (or ``argv`` as this process's script), as a user would retype it
    from the same directory."""
    return f"{interpreter()} " + shlex.join(sys.argv if argv is None else [sys.argv[0], *argv])


# the flags a continued run must be given again: where its state, its runs and its study live
WHERE_FLAGS = (("--storage-path", "storage_path"), ("--tracking-uri", "tracking_uri"), ("--study-storage", "storage"))


def resume_command(name: str, args, profile: str | None = None) -> str:
    """``python <the script that ran> [--profile P] --resume NAME`` (+ the storage and tracking flags it was given):
    continues a grid sweep (its Tune run NAME) or a study (NAME) as printed, from the directory it was started in."""
    extra = []
    for flag, attr in WHERE_FLAGS:
        value = getattr(args, attr, None)
        if value:
            extra += [flag, value]
    return command_line([*(["--profile", profile] if profile else []), "--resume", name, *extra])

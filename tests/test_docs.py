"""Every command in README.md and docs/*.md still runs as printed, as far as can be told without running it: each
shell line is one of the project's commands (or a named outside tool), its script or file exists, its flags and
values parse with that command's own parser (what a renamed or removed flag breaks first), and every Python block
compiles and imports what it names. Links between the docs point at files that exist."""
from __future__ import annotations

import argparse
import ast
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# commands of other programs the docs show (not checked beyond their name)
OUTSIDE = ("ray ", "pip install ", ".venv/bin/pip install ", ".venv/bin/optuna-dashboard ", "bash .ci/run")
PYTHONS = (".venv/bin/python ", "python ")


def blocks(path: Path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", path.read_text(), re.S)


def commands(path: Path) -> list[str]:
    """The shell commands of a doc's bash blocks: continuation lines joined, comments and blank lines dropped."""
    out = []
    for block in blocks(path, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                out.append(shlex.join(words))
    return out


ALL = [(p.relative_to(ROOT).as_posix(), c) for p in DOCS for c in commands(p)]


def _parse(parser: argparse.ArgumentParser, argv: list[str], what: str) -> argparse.Namespace:
    def error(message: str):
        raise AssertionError(f"{what}: {message}")

    parser.error = error
    for action in parser._actions:  # argparse's own API: subcommand parsers report through the same hook
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.error = error
    return parser.parse_args(argv)


def _sweep_parser(script: Path):
    from hyporay.engine.launch import build_parser
    from hyporay.sweeps import SWEEPS

    return build_parser(SWEEPS[script.stem])


def check(command: str) -> None:
    words = shlex.split(command)
    if command.startswith(OUTSIDE):
        return
    if words[0] == "make":
        targets = re.findall(r"^([a-z-]+):", (ROOT / "Makefile").read_text(), re.M)
        assert words[1] in targets, f"make {words[1]}: no such target"
        return
    if words[0] == ".venv/bin/hyporay":
        from hyporay.cli import build_parser

        args = _parse(build_parser(), words[1:], command)
        for name in ("config", "cluster_files", "files"):
            for f in [getattr(args, name, None)] if isinstance(getattr(args, name, None), str) \
                    else getattr(args, name, None) or []:
                assert (ROOT / f).is_file(), f"{command}: no file {f}"
        return
    if command.startswith(PYTHONS):
        script = ROOT / words[1]
        assert script.is_file(), f"{command}: no script {words[1]}"
        if script.parent.name == "sweeps":
            _parse(_sweep_parser(script), words[2:], command)
        return
    raise AssertionError(f"{command}: not a command of this project nor a known outside tool")


@pytest.mark.parametrize("doc, command", ALL, ids=[f"{d}:{c[:50]}" for d, c in ALL])
def test_every_command_in_the_docs_parses_as_printed(doc, command):
    check(command)


def test_the_check_can_fail():
    for bad in (".venv/bin/python sweeps/thrm_lambda.py --lambdax 0,10",   # a flag that does not exist
                ".venv/bin/hyporay train configs/nope.yaml",
                ".venv/bin/python sweeps/gone.py",
                "make runn",
                "curl http://example.org"):
        with pytest.raises(AssertionError):
            check(bad)


@pytest.mark.parametrize("doc", DOCS, ids=[p.name for p in DOCS])
def test_python_blocks_compile_and_import_what_they_name(doc):
    for block in blocks(doc, "python"):
        tree = ast.parse(block)
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module.startswith("hyporay"):
                import importlib

                mod = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(mod, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}"), \
                        f"{doc.name}: {node.module} has no {alias.name}"


@pytest.mark.parametrize("doc", DOCS, ids=[p.name for p in DOCS])
def test_links_between_docs_point_at_files(doc):
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text()):
        assert (doc.parent / target).exists(), f"{doc.name}: link to {target}, which does not exist"

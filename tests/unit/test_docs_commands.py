"""Every command shown in README.md and docs/ parses against the real program, as written.

Commands are read from fenced code blocks and inline code spans. `qanchor ...` is parsed with the CLI's own
parser; `python -m MODULE ...` and `python benchmarks/...py ...` run their real argument parser in the environment
the docs name (model env for training, services env otherwise) and stop right after parsing, so nothing starts;
a module without an argument parser (a server started with no flags) must at least exist; `scripts/*.sh` must exist.
Placeholders (`<job_id>`, `...`, `[--opt value]`) are filled or cut. The demo itself runs in
tests/integration/test_demo.py.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.cli import __main__ as cli

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", REPO / "BENCHMARKS.md", REPO / "artifacts" / "README.md",
        REPO / "benchmarks" / "serving" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
START = re.compile(r"^(?:[A-Z_]+=\S+\s+)*(?:\.venv(?:-model)?/bin/)?"
                   r"(?:qanchor\s|python3?\s|torchrun\s|scripts/\S+\.sh)")
MODEL_MODULES = ("training.", "services.tuning")  # services.tuning.snapshot is the services-env exception


@dataclass(frozen=True)
class Command:
    where: str
    argv: list[str]
    # An inline code span in prose (`qanchor events produce`) names a command; a code block shows a whole one.
    inline: bool = False

    @property
    def label(self) -> str:
        return f"{self.where}: {' '.join(self.argv)}"


def _candidates(text: str) -> list[tuple[int, str, bool]]:
    out, in_block, pending = [], False, ""
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip().startswith("```"):
            in_block, pending = not in_block, ""
            continue
        if in_block:
            line = pending + line.strip()
            pending = ""
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            out.append((n, line, False))
        else:
            out.extend((n, span, True) for span in re.findall(r"`([^`]+)`", line))
    return [(n, c.strip(), inline) for n, c, inline in out if START.match(c.strip())]


def _argv(raw: str) -> list[str]:
    raw = re.sub(r"<[^\s>][^>]*>", "x", raw)            # <job_id>, <tmp repository>
    raw = re.sub(r"\[(--[^\]]*)\]", r"\1", raw)          # [--model qanchor]
    try:
        words = shlex.split(raw, comments=True)
    except ValueError:
        words = raw.split()
    out: list[str] = []
    for w in words:
        if w in ("|", "&&", ";", "||"):
            break
        if w in ("<", ">", "2>&1") or w.startswith((">", "<")):
            break  # a redirection: the command is what came before
        if "$@" in w:
            continue
        out.append(w)
    while out and re.fullmatch(r"[A-Z_]+=\S*", out[0]):
        out.pop(0)  # VAR=value prefixes
    return out


def doc_commands() -> list[Command]:
    found: dict[tuple[str, ...], Command] = {}
    for path in DOCS:
        if not path.exists():
            continue
        for n, raw, inline in _candidates(path.read_text()):
            argv = _argv(raw)
            if argv:
                found.setdefault(tuple(argv), Command(f"{path.relative_to(REPO)}:{n}", argv, inline))
    return list(found.values())


def _cut_placeholders(argv: list[str]) -> tuple[list[str], bool]:
    for i, w in enumerate(argv):
        if "..." in w:
            return argv[:i], True
    return argv, False


# ---- qanchor -----------------------------------------------------------------------------------------------
def _qanchor_commands() -> list[Command]:
    return [c for c in doc_commands() if Path(c.argv[0]).name == "qanchor"]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _walk(parser: argparse.ArgumentParser, words: list[str]) -> argparse.ArgumentParser:
    for word in words:
        parser = _subparsers(parser).get(word, parser)
    return parser


@pytest.mark.parametrize("cmd", _qanchor_commands(), ids=lambda c: c.label)
def test_qanchor_command_parses(cmd: Command) -> None:
    argv, cut = _cut_placeholders(cmd.argv[1:])
    parser = cli.build_parser()
    if cmd.inline and not cut:  # a command named in prose: its words up to the first argument are subcommands
        argv, cut = argv[:next((i for i, w in enumerate(argv) if w.startswith("-")), len(argv))], True
        while argv and argv[-1] not in _subparsers(_walk(parser, argv[:-1])):
            argv = argv[:-1]
        assert argv, f"{cmd.label}: names no qanchor command"
    if cut:  # `qanchor stack ...`: the named subcommands must exist
        for word in argv:
            subs = _subparsers(parser)
            assert word in subs, f"{cmd.label}: no subcommand {word!r}"
            parser = subs[word]
        return
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{cmd.label}: the CLI's parser refused it (exit {exc.code})")
    assert getattr(args, "func", None) is not None, f"{cmd.label}: does not name a command"


# ---- python -m / python script.py / scripts ------------------------------------------------------------------
DRIVER = r'''
import argparse, json, runpy, sys
class Parsed(BaseException):
    pass
real_parse_args, real_known = argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args
state = {"depth": 0, "in_parse_args": False}
def parse_args(self, args=None, namespace=None):
    state["in_parse_args"] = True
    try:
        real_parse_args(self, args, namespace)
    finally:
        state["in_parse_args"] = False
    raise Parsed()
def parse_known_args(self, args=None, namespace=None):
    state["depth"] += 1
    try:
        result = real_known(self, args, namespace)
    finally:
        state["depth"] -= 1
    if state["depth"] == 0 and not state["in_parse_args"]:
        raise Parsed()
    return result
argparse.ArgumentParser.parse_args = parse_args
argparse.ArgumentParser.parse_known_args = parse_known_args
results = []
for kind, target, argv in json.load(sys.stdin):
    sys.argv = [target, *argv]
    try:
        if kind == "module":
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(target, run_name="__main__")
        results.append([0, "finished without parsing arguments"])
    except Parsed:
        results.append([0, "parsed"])
    except SystemExit as exc:
        results.append([0 if exc.code in (0, None) else 2, f"exit {exc.code}"])
    except BaseException as exc:
        results.append([1, f"{type(exc).__name__}: {exc}"])
print("@@RESULTS@@" + json.dumps(results))
'''


def _python_target(argv: list[str]) -> tuple[str, str, list[str], str] | None:
    """(kind, module or path, args, env) of a python/torchrun command; None when it is pytest or not Python."""
    prog = argv[0]
    env = "model" if "venv-model" in prog else "services" if ".venv/" in prog else ""
    if Path(prog).name not in ("python", "python3", "torchrun"):
        return None
    rest = argv[1:]
    if "-m" in rest:
        i = rest.index("-m")
        module, args = rest[i + 1], rest[i + 2:]
        if module == "pytest":
            return None
        env = env or ("model" if module.startswith(MODEL_MODULES) and module != "services.tuning.snapshot"
                      else "services")
        return "module", module, args, env
    script = next((w for w in rest if w.endswith(".py")), None)
    if script is None:
        return None
    model_scripts = ("benchmarks/quality/", "benchmarks/prefix_cache/", "benchmarks/serving/bench_runtime")
    env = env or ("model" if script.startswith(model_scripts) else "services")
    return "path", str(REPO / script), rest[rest.index(script) + 1:], env


def _has_parser(module: str) -> bool:
    """True when the module (or the `main` its __main__ imports) builds an argparse parser: safe to run to
    the end of parsing. Others (servers, Celery's worker) are only checked for existence."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return False
    origin = Path(spec.origin)
    if origin.name == "__init__.py":
        origin = origin.with_name("__main__.py")
    text = origin.read_text() if origin.exists() else ""
    for imported in re.findall(r"^from (\S+) import main\b", text, flags=re.M):
        sub = importlib.util.find_spec(imported)
        if sub is not None and sub.origin:
            text += Path(sub.origin).read_text()
    return "argparse" in text


def _run_parse_only(env: str, jobs: list[tuple[str, str, list[str]]]) -> list[tuple[int, str]]:
    python = REPO / (".venv-model" if env == "model" else ".venv") / "bin" / "python"
    if not python.exists():
        pytest.skip(f"{python} not found: run scripts/setup_env.sh")
    proc = subprocess.run([str(python), "-c", DRIVER], input=json.dumps(jobs), capture_output=True, text=True,
                          cwd=REPO, timeout=900, env=dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1",
                                                          TRANSFORMERS_OFFLINE="1"))
    marker = proc.stdout.rfind("@@RESULTS@@")
    assert marker >= 0, f"the parse-only driver failed:\n{proc.stderr[-3000:]}"
    return [tuple(r) for r in json.loads(proc.stdout[marker + len("@@RESULTS@@"):])]


def test_python_commands_parse_and_scripts_exist() -> None:
    problems: list[str] = []
    jobs: dict[str, list[tuple[Command, tuple[str, str, list[str]]]]] = {"services": [], "model": []}
    for cmd in doc_commands():
        argv, cut = _cut_placeholders(cmd.argv)
        if not argv:
            continue
        if argv[0].startswith("scripts/"):
            if not (REPO / argv[0]).is_file():
                problems.append(f"{cmd.label}: {argv[0]} does not exist")
            continue
        target = _python_target(argv)
        if target is None:
            continue
        kind, name, args, env = target
        if kind == "module":
            if importlib.util.find_spec(name.split(".")[0]) is None or not _module_exists(name):
                problems.append(f"{cmd.label}: no module {name}")
                continue
            if cut or (not args) or not _has_parser(name):
                continue
        elif not Path(name).is_file():
            problems.append(f"{cmd.label}: no script {name}")
            continue
        elif cut:
            continue
        jobs[env].append((cmd, (kind, name, args)))
    for env, items in jobs.items():
        if not items:
            continue
        for (cmd, _), (code, detail) in zip(items, _run_parse_only(env, [job for _, job in items])):
            if code != 0 or detail == "finished without parsing arguments":
                problems.append(f"{cmd.label}: {detail}")
    assert not problems, "\n".join(problems)


def _module_exists(name: str) -> bool:
    path = REPO / Path(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()


def test_the_docs_show_commands_at_all() -> None:
    argv0 = {Path(c.argv[0]).name for c in doc_commands()}
    assert {"qanchor", "python"} <= argv0
    assert any(c.argv[:3] == [".venv/bin/qanchor", "scenario", "register"] for c in doc_commands())

"""The installed `qanchor` command runs the checkout it is called from (scripts/qanchor_launcher.py), not the one the
shared environment's editable install names. Two fake checkouts, each with its own `services.cli`."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from services.common.settings import repo_root

LAUNCHER = repo_root() / "scripts" / "qanchor_launcher.py"


def _load():
    spec = importlib.util.spec_from_file_location("qanchor_launcher", LAUNCHER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def fake_checkout(root: Path, name: str) -> Path:
    cli = root / "services" / "cli"
    cli.mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'qanchor'\n")
    (root / "services" / "__init__.py").write_text("")
    (cli / "__init__.py").write_text("")
    (cli / "__main__.py").write_text(f"import sys\ndef main():\n    print('{name}', sys.argv[1:])\n    return 7\n")
    return root


def installed(env_bin: Path) -> Path:
    """The launcher as setup_env.sh writes it into an environment's bin/."""
    env_bin.mkdir(parents=True)
    script = env_bin / "qanchor"
    script.write_text(f"#!{sys.executable}\n" + LAUNCHER.read_text())
    script.chmod(0o755)
    return script


def test_checkout_from_the_path_called_then_from_the_working_directory(tmp_path):
    launcher = _load()
    a, b = fake_checkout(tmp_path / "a", "A"), fake_checkout(tmp_path / "b", "B")
    assert launcher.checkout_root(str(a / ".venv" / "bin" / "qanchor"), b / "services") == a
    assert launcher.checkout_root("/usr/local/bin/qanchor", b / "services" / "cli") == b
    assert launcher.checkout_root(str(tmp_path / "env" / "bin" / "qanchor"), tmp_path) is None
    assert launcher.checkout_root("qanchor", tmp_path) is None


@pytest.mark.parametrize("call_from", ["a", "b"])
def test_the_installed_command_runs_the_checkout_it_is_called_from(tmp_path, call_from):
    a, b = fake_checkout(tmp_path / "a", "A"), fake_checkout(tmp_path / "b", "B")
    script = installed(a / ".venv" / "bin")  # a real folder here; setup links .venv to the shared environment
    if call_from == "a":  # <checkout a>/.venv/bin/qanchor, from inside checkout b: a's code
        out = subprocess.run([sys.executable, str(script), "events", "dlq"], cwd=b, capture_output=True, text=True)
        assert (out.returncode, out.stdout.strip()) == (7, "A ['events', 'dlq']"), out.stderr
    else:  # an environment outside any checkout (on PATH), from inside checkout b: b's code
        elsewhere = installed(tmp_path / "env" / "bin")
        out = subprocess.run([sys.executable, str(elsewhere), "x"], cwd=b / "services", capture_output=True,
                             text=True)
        assert (out.returncode, out.stdout.strip()) == (7, "B ['x']"), out.stderr


def test_no_checkout_and_no_install_says_what_to_do(tmp_path):
    script = installed(tmp_path / "env" / "bin")
    # -S: no site-packages, so no editable install to fall back on (the state after that checkout was deleted)
    out = subprocess.run([sys.executable, "-S", str(script)], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 2
    assert "cannot import the project" in out.stderr and "scripts/setup_env.sh" in out.stderr


@pytest.mark.parametrize("link", ["absolute", "relative", "two links", "relative, in a linked folder"])
def test_a_personal_link_to_a_checkouts_command_runs_that_checkout(tmp_path, link):
    """`ln -s <checkout>/.venv/bin/qanchor ~/bin/qanchor`, then `qanchor` from anywhere: the checkout the link names,
    not the working directory's and not the editable install's."""
    a, b = fake_checkout(tmp_path / "a", "A"), fake_checkout(tmp_path / "b", "B")
    installed(a / ".venv" / "bin")
    home_bin = tmp_path / "home" / "bin"
    home_bin.mkdir(parents=True)
    mine = home_bin / "qanchor"
    if link == "relative":
        mine.symlink_to(Path("..") / ".." / "a" / ".venv" / "bin" / "qanchor")
    elif link == "relative, in a linked folder":  # ~/bin is a link to cfg/dots/bin, a folder deeper: `..` counts
        dots = tmp_path / "cfg" / "dots" / "bin"  # from there, not lexically from home/bin
        dots.mkdir(parents=True)
        (dots / "qanchor").symlink_to(Path("..") / ".." / ".." / "a" / ".venv" / "bin" / "qanchor")
        home_bin.rmdir()
        home_bin.symlink_to(dots)
    else:
        mine.symlink_to(a / ".venv" / "bin" / "qanchor")
    if link == "two links":
        (home_bin / "qa").symlink_to(mine)
        mine = home_bin / "qa"
    out = subprocess.run([sys.executable, str(mine), "events"], cwd=b, capture_output=True, text=True)
    assert (out.returncode, out.stdout.strip()) == (7, "A ['events']"), out.stderr
    assert _load().checkout_root(str(mine), tmp_path) == a

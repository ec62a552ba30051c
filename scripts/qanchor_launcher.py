"""The `qanchor` command as installed in an environment: it runs the checkout it was called from.

The environments live in a cache that several checkouts on one machine share (scripts/setup_env.sh), and the
editable install's path mapping names whichever checkout ran setup last. A console script that trusted it would run
another checkout's code, or fail with "No module named 'services'" once that checkout is deleted. setup_env.sh
writes this file over the generated `bin/qanchor`; it finds its checkout from the path it was called by
(`<checkout>/.venv/bin/qanchor`, also through PATH, or through a link to it such as `~/bin/qanchor`), else from the
working directory, and puts that checkout first on sys.path. Standard library only: nothing of the project may be
imported before the checkout is known.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path


def is_checkout(d: Path) -> bool:
    return (d / "services" / "cli" / "__main__.py").is_file() and (d / "pyproject.toml").is_file()


def called_as(argv0: str, hops: int = 40) -> list[Path]:
    """The path called, then each path a link there leads to, one link at a time. Not resolved at once: the last
    hop lands in the shared environment, and the path that names the checkout is one of those before it."""
    path, out = os.path.abspath(argv0), []
    while len(out) < hops:
        out.append(Path(path))
        if not os.path.islink(path):
            break
        path = link_target(path)
    return out


def link_target(link: str) -> str:
    """Where one link leads, keeping the names it was reached by (a checkout's `.venv` link unresolved). A relative
    target counts from the folder the link is physically in: where that folder is itself reached through a link,
    `..` in the target leaves the real folder, so the name-keeping reading is used only when it leads to the same
    file as the link does."""
    target = os.readlink(link)
    named = os.path.normpath(os.path.join(os.path.dirname(link), target))
    if os.path.isabs(target) or os.path.realpath(named) == os.path.realpath(link):
        return named
    return os.path.normpath(os.path.join(os.path.realpath(os.path.dirname(link)), target))


def checkout_root(argv0: str, cwd: Path) -> Path | None:
    """<checkout> when called as <checkout>/<env link>/bin/qanchor (directly or through links to it); else the
    checkout holding cwd; else None."""
    for called in called_as(argv0):
        if called.parent.name == "bin" and is_checkout(called.parent.parent.parent):
            return called.parent.parent.parent
    for d in (cwd, *cwd.parents):
        if is_checkout(d):
            return d
    return None


def main() -> int:
    root = checkout_root(sys.argv[0], Path.cwd())
    if root is not None:
        sys.path.insert(0, str(root))
    try:
        from services.cli.__main__ import main as cli_main
    except ModuleNotFoundError as exc:
        if exc.name not in ("services", "services.cli"):
            raise
        sys.stderr.write(f"qanchor: cannot import the project ({exc}). Run it from a qanchor checkout as "
                         ".venv/bin/qanchor, or run scripts/setup_env.sh in the checkout you use.\n")
        return 2
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())

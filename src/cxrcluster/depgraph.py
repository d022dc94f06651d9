"""Which ``src/`` files each notebook runs: the import closure the Makefile's rules depend on.

Every rule of the Makefile that executes a notebook lists, as prerequisites,
the files of ``src/cxrcluster`` that the notebook imports, directly or through
other modules, so that editing one of them re-runs exactly the notebooks that
call it. This module computes that list from the code itself: it reads the
notebook's code cells and each module's source with :mod:`ast` (nothing is
imported or executed) and follows every import of ``cxrcluster``, including
those inside functions and relative ones inside sub-packages.

It uses the standard library alone, so the Makefile can run it with any
Python before the project's environment exists::

    python -m cxrcluster.depgraph notebooks/03-cluster.ipynb
    python -m cxrcluster.depgraph cxrcluster.report
    python -m cxrcluster.depgraph --make SRC_CLUSTER=notebooks/03-cluster.ipynb ...

The last form writes one make assignment per ``NAME=TARGET`` pair, the file
the Makefile includes (one call for the whole graph: each call parses the
package afresh).
"""

from __future__ import annotations

import ast
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

#: The folder holding the ``cxrcluster`` package.
SRC_DIR = Path(__file__).resolve().parents[1]
PACKAGE = "cxrcluster"


def module_file(module: str, src_dir: Path = SRC_DIR) -> Path | None:
    """The source file of a dotted module name under ``src_dir``, or None if it is not a module there."""
    base = src_dir.joinpath(*module.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _imports(tree: ast.AST, current: str | None) -> set[str]:
    """Dotted names of the ``cxrcluster`` modules (or candidates) a syntax tree imports.

    ``current`` is the importing module's package (for relative imports);
    ``from pkg import name`` yields both ``pkg`` and ``pkg.name``, since
    ``name`` may be a module or a name defined in ``pkg``.
    """
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if current is None:
                    continue
                parts = current.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return {name for name in found if name == PACKAGE or name.startswith(PACKAGE + ".")}


def notebook_source(path: str | Path) -> str:
    """The code cells of a notebook, joined; IPython magics and shell lines are dropped."""
    cells = json.loads(Path(path).read_text(encoding="utf-8"))["cells"]
    lines = []
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        lines.extend(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
    return "\n".join(lines)


def closure(modules: Iterable[str], src_dir: Path = SRC_DIR) -> list[Path]:
    """Every source file reached from ``modules`` through imports of ``cxrcluster``.

    Parameters
    ----------
    modules : iterable of str
        Dotted names imported by the starting point (a candidate that is not a
        module, such as a function imported by ``from pkg import f``, is skipped).
    src_dir : pathlib.Path
        The folder holding the package.

    Returns
    -------
    list of pathlib.Path
        Sorted; each module's enclosing packages' ``__init__.py`` included,
        since Python runs them on import.
    """
    seen: set[Path] = set()
    todo = list(modules)
    while todo:
        name = todo.pop()
        path = module_file(name, src_dir)
        if path is None or path in seen:
            continue
        seen.add(path)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # enclosing packages
        package = name if path.name == "__init__.py" else ".".join(parts[:-1])
        todo.extend(_imports(ast.parse(path.read_text(encoding="utf-8"), str(path)), package))
    return sorted(seen)


def dependencies(target: str | Path, src_dir: Path = SRC_DIR) -> list[Path]:
    """The ``src/`` files that a notebook (a ``.ipynb`` path) or a module (a dotted name) runs."""
    if str(target).endswith(".ipynb"):
        starts = _imports(ast.parse(notebook_source(target), str(target)), None)
    else:
        starts = {str(target)}
        if module_file(str(target), src_dir) is None:
            raise ValueError(f"{target} is neither a notebook nor a module under {src_dir}")
    return closure(starts, src_dir)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the ``src/`` files of the notebooks or modules given, relative to the project root.

    With ``--make NAME=TARGET ...``, print one line ``NAME := files`` per pair instead.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args == ["--make"]:
        print("usage: python -m cxrcluster.depgraph [--make NAME=]NOTEBOOK.ipynb|cxrcluster.MODULE ...",
              file=sys.stderr)
        return 2
    root = SRC_DIR.parent

    def listing(targets: Iterable[str]) -> str:
        files = sorted({p for t in targets for p in dependencies(t)})
        return " ".join(p.relative_to(root).as_posix() for p in files)

    if args[0] == "--make":
        for pair in args[1:]:
            name, sep, target = pair.partition("=")
            if not sep or not name or not target:
                print(f"--make takes NAME=TARGET pairs, not {pair!r}", file=sys.stderr)
                return 2
            print(f"{name} := {listing(target.split(','))}")
        return 0
    print(listing(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

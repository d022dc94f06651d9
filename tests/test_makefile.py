"""The Makefile knows the whole graph: each notebook's rule depends on exactly the src/ files it runs.

Three checks, from the inside out: the import closure (``cxrcluster.depgraph``)
contains every ``cxrcluster`` module that importing a notebook's imports really
loads; the rules in make's database list exactly that closure; and a notebook
edited to import one more module makes make's rule grow by that module.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cxrcluster import depgraph
from cxrcluster.paths import PROJECT_ROOT

NOTEBOOKS = sorted((PROJECT_ROOT / "notebooks").glob("*.ipynb"))
SRC = "src/cxrcluster/"


def make_database(root: Path, out: Path) -> dict[str, set[str]]:
    """Every explicit rule of make's database under ``root``: target -> its normal prerequisites."""
    proc = subprocess.run(["make", "-pn", f"OUT={out}", "VARIANT=masked", "help"], cwd=root,
                          capture_output=True, text=True)
    assert "Targets:" in proc.stdout, proc.stderr[-2000:]
    rules = {}
    for line in proc.stdout.splitlines():
        match = re.match(r"^([^#\s=][^=]*?):{1,2}(?!=)\s*(.*)$", line)
        if match and "%" not in match.group(1) and "$" not in line:
            prerequisites = match.group(2).split("|")[0].split()
            rules[match.group(1).strip()] = set(prerequisites)
    return rules


def src_files(prerequisites: set[str]) -> set[str]:
    return {p for p in prerequisites if p.startswith(SRC)}


def closure_of(target: str | Path, root: Path = PROJECT_ROOT) -> set[str]:
    src_dir = root / "src"
    return {p.relative_to(root).as_posix() for p in depgraph.dependencies(target, src_dir)}


def rules_of(rules: dict[str, set[str]], notebook: str) -> dict[str, set[str]]:
    """The rules that execute ``notebook`` (the rule computing the graph itself reads every notebook)."""
    return {t: p for t, p in rules.items() if f"notebooks/{notebook}.ipynb" in p and not t.endswith("src-deps.mk")}


@pytest.fixture(scope="module")
def rules(tmp_path_factory):
    return make_database(PROJECT_ROOT, tmp_path_factory.mktemp("out"))


def test_every_notebook_has_a_rule_that_depends_on_exactly_its_import_closure(rules):
    for notebook in NOTEBOOKS:
        found = rules_of(rules, notebook.stem)
        assert found, f"no rule executes {notebook.name}"
        expected = closure_of(notebook)
        assert f"{SRC}paths.py" in expected and f"{SRC}__init__.py" in expected
        for target, prerequisites in found.items():
            assert src_files(prerequisites) == expected, (target, src_files(prerequisites) ^ expected)


def test_the_index_page_and_the_demo_data_depend_on_their_modules(rules):
    index = [p for t, p in rules.items() if t.endswith("/reports/index.html")]
    assert len(index) == 2  # the full and the masked variant
    for prerequisites in index:
        assert src_files(prerequisites) == closure_of("cxrcluster.report")
    assert src_files(rules["data/demo/SYNTHETIC.md"]) == closure_of("cxrcluster.demo")


def test_the_label_csvs_are_products_of_the_clustering_rule(tmp_path):
    out = tmp_path / "out"
    (out / "results").mkdir(parents=True)
    (out / "results" / "MobileNetV2-0.35.label_csvs.txt").write_text("MobileNetV2-0.35_KMeans.csv\n"
                                                                       "MobileNetV2-0.35_DBSCAN.csv\n")
    rules = make_database(PROJECT_ROOT, out)
    clustering = rules_of(rules, "03-cluster")
    for name in ("results/MobileNetV2-0.35.csv", "results/MobileNetV2-0.35.label_csvs.txt",
                 "clustering_labels/MobileNetV2-0.35_KMeans.csv", "clustering_labels/MobileNetV2-0.35_DBSCAN.csv"):
        assert str(out / name) in clustering, name
    # the report reads them, so a deleted one is asked for, and made again by the clustering rule
    report = rules_of(rules, "04-report")[str(out / "clustering_results.csv")]
    assert {str(out / "clustering_labels" / f"MobileNetV2-0.35_{a}.csv") for a in ("KMeans", "DBSCAN")} <= report


@pytest.mark.slow
@pytest.mark.parametrize("notebook", [nb.stem for nb in NOTEBOOKS])
def test_the_closure_holds_every_module_that_importing_the_notebook_loads(notebook):
    """Ground truth by running the notebook's import lines in a fresh interpreter."""
    source = depgraph.notebook_source(PROJECT_ROOT / "notebooks" / f"{notebook}.ipynb")
    imports = "\n".join(ast.unparse(node) for node in ast.parse(source).body  # top-level, over several lines too
                        if isinstance(node, ast.Import | ast.ImportFrom) and re.match(
                            r"^(from cxrcluster[\w.]* import |import cxrcluster)", ast.unparse(node)))
    assert imports, f"{notebook} imports nothing from cxrcluster"
    probe = (f"import sys\n{imports}\n"
             "print('\\n'.join(sorted(m.__file__ for n, m in list(sys.modules.items())"
             " if n.split('.')[0] == 'cxrcluster' and getattr(m, '__file__', None))))")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = {Path(f).resolve().relative_to(PROJECT_ROOT).as_posix() for f in proc.stdout.split()}
    assert loaded and loaded <= closure_of(PROJECT_ROOT / "notebooks" / f"{notebook}.ipynb"), loaded


def test_a_new_import_in_a_notebook_reaches_its_rule(tmp_path):
    """Copy the project's sources, add an import to notebook 00, and ask make again."""
    root = tmp_path / "project"
    root.mkdir()
    for part in ("Makefile", "notebooks", "src", "config", "requirements.txt", "requirements-source.txt",
                 "pyproject.toml"):
        source = PROJECT_ROOT / part
        if source.is_dir():
            shutil.copytree(source, root / part, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(source, root / part)
    before = src_files(rules_of(make_database(root, tmp_path / "out"), "00-prepare-data").popitem()[1])
    assert f"{SRC}probe/__init__.py" not in before

    path = root / "notebooks" / "00-prepare-data.ipynb"
    nb = json.loads(path.read_text())
    nb["cells"].append({"cell_type": "code", "execution_count": None, "id": "added", "metadata": {}, "outputs": [],
                        "source": ["from cxrcluster import probe\n"]})
    path.write_text(json.dumps(nb, indent=1))
    after = src_files(rules_of(make_database(root, tmp_path / "out"), "00-prepare-data").popitem()[1])
    assert f"{SRC}probe/__init__.py" in after and before < after


def test_depgraph_follows_relative_imports_and_imports_inside_functions(tmp_path):
    package = tmp_path / "cxrcluster"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from cxrcluster import b\n")
    (package / "b.py").write_text("import numpy\n")
    (package / "sub" / "__init__.py").write_text("from .inner import g\n")
    (package / "sub" / "inner.py").write_text("from ..a import f\ng = 1\n")
    (package / "unused.py").write_text("")
    found = {p.relative_to(tmp_path).as_posix() for p in depgraph.closure(["cxrcluster.sub", "cxrcluster.sub.g"], tmp_path)}
    assert found == {"cxrcluster/__init__.py", "cxrcluster/sub/__init__.py", "cxrcluster/sub/inner.py",
                     "cxrcluster/a.py", "cxrcluster/b.py"}

"""The products table: typed readers and writers, and the Makefile's and notebooks' names checked against it."""

import ast
import json
import re

import numpy as np
import pandas as pd
import pytest

from cxrcluster import products
from cxrcluster.paths import PROJECT_ROOT

#: A value of each kind, and one more, as a writer would hold them.
SAMPLES = {"str": ["a b", ""], "int": [3, 0], "float": [0.25, np.nan], "bool": [True, False]}

TYPED = [p for p in products.PRODUCTS.values() if p.columns]


def _frame(product: products.Product) -> pd.DataFrame:
    return pd.DataFrame({name: SAMPLES[kind] for name, kind in product.columns})


@pytest.mark.parametrize("product", TYPED, ids=[p.path for p in TYPED])
def test_every_table_round_trips_with_its_kinds_and_unchanged_bytes(product, tmp_path):
    frame = _frame(product)
    path = product.write(frame, root=tmp_path)
    assert path == tmp_path.joinpath(*product.path.split("/"))
    assert path.read_text() == frame.to_csv(index=False)  # written as given, nothing cast
    back = product.read(path)
    assert back.columns.tolist() == product.column_names
    for name, kind in product.columns:
        column = back[name]
        if kind == "str":
            assert column.tolist() == ["a b", ""], name  # an empty text field stays "", not NaN
        elif kind == "int":
            assert column.dtype == np.int64, name
        elif kind == "float":
            assert column.dtype == np.float64 and np.isnan(column.iloc[1]), name
        else:
            assert column.dtype == bool and column.tolist() == [True, False], name


def test_further_columns_take_their_kind_from_a_pattern(tmp_path):
    frame = _frame(products.LABEL_ISSUES).assign(**{
        "cleanlab_issue_ResNet50": ["1", "0"], "cleanlab_suggested_ResNet50": ["NORMAL", ""],
        "cleanlab_quality_ResNet50": [0.5, 0.75]})
    frame["cleanlab_issue"] = [True, None]  # cleanlab may not judge an image: an empty field
    back = products.LABEL_ISSUES.read(products.LABEL_ISSUES.write(frame, root=tmp_path))
    assert back["cleanlab_issue_ResNet50"].tolist() == [True, False]
    assert back["cleanlab_suggested_ResNet50"].tolist() == ["NORMAL", ""]
    assert back["cleanlab_issue"].iloc[0] is np.True_ or back["cleanlab_issue"].iloc[0] == True  # noqa: E712
    assert pd.isna(back["cleanlab_issue"].iloc[1])
    comparison = pd.DataFrame({"model": ["A"], "best_algorithm_full": ["KMeans"], "best_label_change_full": ["12.5"],
                               "kmeans_ari_masked": [0.5], "probe_accuracy_full": [0.9]})
    back = products.VARIANTS_COMPARISON.read(products.VARIANTS_COMPARISON.write(comparison, root=tmp_path))
    assert back["best_label_change_full"].dtype == np.float64 and back["best_algorithm_full"].iloc[0] == "KMeans"


def test_refusals_name_the_file_and_the_columns(tmp_path):
    frame = _frame(products.LABEL_DRIFT)
    with pytest.raises(KeyError, match=r"label_drift.csv starts with columns .*'image_name'"):
        products.LABEL_DRIFT.write(frame.iloc[:, ::-1], root=tmp_path)
    path = tmp_path / "drift.csv"
    frame.drop(columns="drift_share").to_csv(path, index=False)
    with pytest.raises(KeyError, match=r"drift.csv lacks column\(s\) \['drift_share'\]"):
        products.LABEL_DRIFT.read(path)
    dup = _frame(products.DUPLICATES).assign(label_conflict=["yes", "no"])
    dup.to_csv(path, index=False)
    with pytest.raises(ValueError, match="'label_conflict' holds values other than True/False: \\['no', 'yes'\\]"):
        products.DUPLICATES.read(path)
    with pytest.raises(TypeError, match="give either the file's path or an output root"):
        products.LABEL_DRIFT.read()
    with pytest.raises(TypeError, match="read by its own module"):
        products.CLUSTERING_RESULTS.read(root=tmp_path)
    with pytest.raises(ValueError, match="unknown column kind"):
        products.Product("x.csv", "x", columns=(("a", "text"),))


def test_json_products_hold_their_keys(tmp_path):
    confound = {"confounded": True, "message": "metadata predicts the class", "accuracy": 0.8}
    path = products.CONFOUND.write(confound, root=tmp_path)
    assert products.CONFOUND.read(root=tmp_path) == confound == json.loads(path.read_text())
    with pytest.raises(KeyError, match=r"lacks key\(s\) \['message'\]"):
        products.CONFOUND.write({"confounded": False}, root=tmp_path)
    path.write_text(json.dumps({"confounded": False}))
    with pytest.raises(KeyError, match=r"confound.json lacks key\(s\) \['message'\]"):
        products.CONFOUND.read(path)


# ---------------------------------------------------------------- names elsewhere, against the table

MAKEFILE = (PROJECT_ROOT / "Makefile").read_text()
#: Outputs the Makefile names under an output root that are not single products of the table.
PER_MODEL = ("features/", "results/", "clustering_labels/", "cache", ".make/", "data", "reports/notebooks")


def _makefile_products() -> set[str]:
    named = set()
    for match in re.finditer(r"\$\((?:1|OUT)\)/((?:masked/)?[\w./-]+\.(?:csv|json|html|md))", MAKEFILE):
        path = match.group(1)
        if not path.startswith(PER_MODEL):
            named.add(path)
    return named


def test_every_file_the_makefile_names_is_in_the_table_and_the_reverse():
    table = {p.path for p in products.PRODUCTS.values()}
    named = _makefile_products()
    assert named, "no product found in the Makefile: the pattern no longer matches its rules"
    unknown = {p for p in named if p not in table and p.removeprefix("masked/") not in table}
    assert not unknown, f"the Makefile names files the products table does not: {sorted(unknown)}"
    # the table's files that make builds (the bench's report is under the project root, not OUT)
    unbuilt = {p for p in table - {products.BENCHMARKS.path}
               if p not in named and f"masked/{p}" not in named}
    assert not unbuilt, f"the products table names files no Makefile rule builds: {sorted(unbuilt)}"
    assert f"--out {products.BENCHMARKS.path.removesuffix('.md')}" in MAKEFILE
    # make clean removes reports/ whole and every top-level product by name
    clean = re.search(r"^clean:.*?\n((?:\t.*\n)+)", MAKEFILE, re.M).group(1)
    top = [p.path for p in products.PRODUCTS.values() if "/" not in p.path]
    assert "reports" in clean and all(name in clean for name in top), clean


def _parameters(notebook) -> dict:
    nb = json.loads(notebook.read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    tree = ast.parse("".join(cell["source"]))
    return {node.targets[0].id: node.value.value for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)}


@pytest.mark.parametrize("notebook", sorted((PROJECT_ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.stem)
def test_notebook_defaults_spell_the_tables_paths(notebook):
    by_name = {p.filename: p for p in products.PRODUCTS.values()}
    for parameter, value in _parameters(notebook).items():
        if isinstance(value, str) and value.rsplit("/", 1)[-1] in by_name:
            product = by_name[value.rsplit("/", 1)[-1]]
            assert value in (product.path, f"masked/{product.path}"), (parameter, value, product.path)


def test_notebooks_and_the_index_read_no_product_behind_its_owner():
    """A second reader of a product is how two figures come to disagree: only its owner parses it."""
    sources = {nb.name: "".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"])
               for nb in (PROJECT_ROOT / "notebooks").glob("*.ipynb")}
    sources["report.py"] = (PROJECT_ROOT / "src" / "cxrcluster" / "report.py").read_text()
    for name, text in sources.items():
        assert "read_csv(" not in text and "json.loads(" not in text, name

"""Every file the pipeline writes: its one name, and for those read back, one typed reader and writer.

The table :data:`PRODUCTS` names each product by its path under an output
root (``OUT``, or ``OUT/masked`` for the lung-masked variant). The Makefile
spells the same names in its rules (``tests/test_products.py`` checks them
against this table, and each notebook's default parameters too); the index
page (:mod:`cxrcluster.report`) links them from here.

A product that one step writes and another reads back has a :class:`Product`
with its columns and their kinds, so that every reader gets the same types:
text stays text (an empty field is ``""``, not NaN), booleans are booleans
whether written as ``True`` or ``1``, integers are integers. Writing checks
the leading columns and writes atomically (:mod:`cxrcluster.atomic`), without
changing a value, so that a file's bytes are those of the frame given.

Products with an owner elsewhere keep it and are only named here: the label
CSVs and results tables (:mod:`cxrcluster.results`), ``original_labels.csv``
and ``reports/dataset.json`` (:mod:`cxrcluster.data`), the features and their
sidecars (:mod:`cxrcluster.features`).
"""

from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from cxrcluster import atomic

#: Kinds a column can have.
KINDS = ("str", "int", "float", "bool")

_TRUE = {"true", "1", "1.0"}
_FALSE = {"false", "0", "0.0"}


@dataclass(frozen=True)
class Product:
    """One file of the pipeline's outputs.

    Attributes
    ----------
    path : str
        Where it lands under an output root, with ``/`` separators.
    what : str
        One line for the index page.
    columns : tuple of (str, str)
        For a CSV read back: its leading columns, in order, and their kinds
        (:data:`KINDS`). Empty for a file that is only named here.
    more : tuple of (str, str)
        Kinds of further columns by name pattern (:mod:`fnmatch`), first match
        wins, e.g. ``("cleanlab_issue_*", "bool")`` for per-model columns; a
        column that matches none is left to pandas.
    keys : tuple of str
        For a JSON product read back: the keys it must hold.
    """

    path: str
    what: str
    columns: tuple[tuple[str, str], ...] = ()
    more: tuple[tuple[str, str], ...] = ()
    keys: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        bad = [k for _, k in (*self.columns, *self.more) if k not in KINDS]
        if bad:
            raise ValueError(f"{self.path}: unknown column kind(s) {bad}; choose from {KINDS}")

    @property
    def filename(self) -> str:
        """The file's name, without its folders."""
        return self.path.rsplit("/", 1)[-1]

    @property
    def column_names(self) -> list[str]:
        """The leading columns, in order."""
        return [name for name, _ in self.columns]

    def under(self, root: str | os.PathLike) -> Path:
        """The product's path under the output root ``root``."""
        return Path(root).joinpath(*self.path.split("/"))

    def kind(self, column: str) -> str | None:
        """The kind of ``column``: from :attr:`columns`, else the first pattern of :attr:`more`, else None."""
        for name, kind in self.columns:
            if name == column:
                return kind
        for pattern, kind in self.more:
            if fnmatch.fnmatchcase(column, pattern):
                return kind
        return None

    # ------------------------------------------------------------ reading and writing

    def read(self, path: str | os.PathLike | None = None, *, root: str | os.PathLike | None = None):
        """Read the product with typed columns (a CSV) or as a dict (a JSON file).

        Parameters
        ----------
        path : path-like, optional
            The file; by default the product's path under ``root``.
        root : path-like, optional
            An output root, when ``path`` is not given.

        Returns
        -------
        pandas.DataFrame or dict

        Raises
        ------
        KeyError
            When a column or key this table promises is missing: the file is
            from another version or another tool.
        ValueError
            When a boolean column holds anything but true/false (or 1/0).
        """
        path = self._where(path, root)
        if self.path.endswith(".json"):
            obj = json.loads(Path(path).read_text(encoding="utf-8"))
            missing = [k for k in self.keys if k not in obj]
            if missing:
                raise KeyError(f"{path} lacks key(s) {missing}")
            return obj
        if not self.columns:
            raise TypeError(f"{self.path} is named here but read by its own module")
        header = pd.read_csv(path, nrows=0).columns.tolist()
        missing = [c for c in self.column_names if c not in header]
        if missing:
            raise KeyError(f"{path} lacks column(s) {missing}; it has {header}")
        kinds = {c: self.kind(c) for c in header}
        text = [c for c, k in kinds.items() if k == "str"]
        # only text columns keep an empty field as "": everywhere else it is NaN, as pandas writes it
        frame = pd.read_csv(path, dtype={c: str for c in text}, keep_default_na=False,
                            na_values={c: ["", "nan", "NaN"] for c in header if c not in text})
        for column, kind in kinds.items():
            if kind == "bool":
                frame[column] = _booleans(frame[column], f"{path}: column {column!r}")
            elif kind == "int" and frame[column].notna().all():
                frame[column] = frame[column].astype("int64")
            elif kind == "float":
                frame[column] = frame[column].astype("float64")
        return frame

    def write(self, obj, path: str | os.PathLike | None = None, *, root: str | os.PathLike | None = None) -> Path:
        """Write the product atomically; return its path.

        A frame must start with :attr:`columns` (more may follow); a dict must
        hold :attr:`keys`. Values are written as given.
        """
        path = self._where(path, root)
        if self.path.endswith(".json"):
            missing = [k for k in self.keys if k not in obj]
            if missing:
                raise KeyError(f"{self.path}: the object to write lacks key(s) {missing}")
            atomic.write_json(obj, path)
            return path
        leading = list(obj.columns[:len(self.columns)])
        if leading != self.column_names:
            raise KeyError(f"{self.path} starts with columns {self.column_names}, the frame with {leading}")
        atomic.write_csv(obj, path)
        return path

    def _where(self, path, root) -> Path:
        if (path is None) == (root is None):
            raise TypeError(f"{self.path}: give either the file's path or an output root")
        return Path(path) if path is not None else self.under(root)


def _booleans(values: pd.Series, where: str) -> pd.Series:
    """True/False (or 1/0) as booleans; with an empty field among them, pandas' nullable ``boolean``."""
    if values.dtype == bool:
        return values
    empty = values.isna()
    text = values.astype(str).str.strip().str.lower()
    unknown = ~text.isin(_TRUE | _FALSE) & ~empty
    if unknown.any():
        raise ValueError(f"{where} holds values other than True/False: {sorted(set(text[unknown]))[:5]}")
    parsed = text.isin(_TRUE)
    return parsed.astype("boolean").mask(empty) if empty.any() else parsed


# ---------------------------------------------------------------- the products

ORIGINAL_LABELS = Product("original_labels.csv", "every image: its name, label, path (and patient, source)")
DATASET = Product("reports/dataset.json", "the dataset: folder, synthetic or not, counts, fingerprint")
AUDIT_METADATA = Product("reports/audit/metadata.csv", "dataset audit per image: format, size, bit depth, headers")
AUDIT_SUMMARY = Product("reports/audit/summary.csv", "dataset audit per class")
CONFOUND = Product("reports/audit/confound.json", "whether file metadata alone predicts the class",
                   keys=("confounded", "message"))
DUPLICATES = Product(
    "reports/duplicates.csv", "exact and near-duplicate images, with label conflicts",
    columns=(("image_a", "str"), ("image_b", "str"), ("label_a", "str"), ("label_b", "str"), ("kind", "str"),
             ("distance", "int"), ("label_conflict", "bool")))
CLUSTERING_RESULTS = Product("clustering_results.csv",
                             "every model × algorithm: label change after matching, raw change, ARI, NMI, ...")
LABEL_DRIFT = Product(
    "label_drift.csv", "per image: share of combinations in which it left its label, and where it went",
    columns=(("image_name", "str"), ("label", "str"), ("n_combinations", "int"), ("n_changed", "int"),
             ("drift_share", "float"), ("most_common_target", "str")))
CLASSIFICATION_RESULTS = Product(
    "classification_results.csv", "supervised baselines (linear probe)",
    columns=(("model", "str"), ("trained_weights", "bool"), ("accuracy_mean", "float"), ("accuracy_std", "float")),
    more=(("*_mean", "float"), ("*_std", "float"), ("recall_*", "float"), ("cv", "str"), ("n_splits", "int"),
          ("grouped_by_patient", "bool"), ("n_images", "int"), ("n_dropped", "int"), ("seed", "int"),
          ("C", "float"), ("finetuned_*", "float"), ("n_sources", "int"), ("n_within_sources", "int"),
          ("source_*", "float"), ("within_source_*", "float")))
INTERPRETABILITY = Product("reports/interpretability.json", "Grad-CAM and saliency: what was drawn, and how")
LABEL_ISSUES = Product(
    "label_issues.csv", "per image: drift, cleanlab's verdict and label quality, duplicate conflicts, "
                        "combined rank (most suspect first)",
    columns=(("rank", "int"), ("image_name", "str"), ("label", "str"), ("combined_score", "float"),
             ("drift_share", "float"), ("n_runs", "int"), ("drift_target", "str"), ("cleanlab_issue", "bool"),
             ("cleanlab_quality", "float"), ("cleanlab_suggested", "str"), ("duplicate_conflict", "str"),
             ("source_explained", "bool")),
    more=(("cleanlab_issue_*", "bool"), ("cleanlab_quality_*", "float"), ("cleanlab_suggested_*", "str")))
LABEL_NOISE_CHECK = Product(
    "reports/label_noise_check.csv", "how well each signal finds planted label errors",
    columns=(("fraction", "float"), ("n_flipped", "int"), ("n_images", "int"), ("signal", "str"),
             ("roc_auc", "float"), ("average_precision", "float"), ("precision_at_k", "float"),
             ("prevalence", "float"), ("seed", "int"), ("subset", "str")))
VARIANTS_COMPARISON = Product(
    "reports/variants_comparison.csv", "full versus lung-masked images, per model",
    columns=(("model", "str"),),
    more=(("*_algorithm_*", "str"), ("*_change_*", "float"), ("*_ari_*", "float"), ("*_accuracy_*", "float"),
          ("*_chance_*", "float")))
MASKS = Product("reports/masks.csv", "per image of the lung-masked variant: the mask's source, status and lung "
                                     "fraction (under masked/)")
PREPARATIONS = Product("reports/preparations.csv",
                       "every algorithm on each candidate feature preparation (make preparations)")
WITHIN_SOURCE_RESULTS = Product(
    "reports/within_source_results.csv", "the fair test: every algorithm on one source's images alone "
                                         "(sources holding two classes or more), beside its chance level",
    columns=(("source", "str"), ("model", "str"), ("clustering", "str"), ("n_images", "int"), ("classes", "str"),
             ("label_percentage_change", "float"), ("chance_label_change", "float"), ("chance_p", "float"),
             ("ari", "float"), ("nmi", "float"), ("status", "str")))
INDEX = Product("reports/index.html", "the report: every product linked, figures inline")
BENCHMARKS = Product("reports/benchmarks.md", "benchmarks (make bench, under the project root)")

#: Every product, by the name of its constant.
PRODUCTS: dict[str, Product] = {name: value for name, value in globals().items() if isinstance(value, Product)}

#: The tables the index page links, in its order (each only when it exists).
INDEX_TABLES = (CLUSTERING_RESULTS, WITHIN_SOURCE_RESULTS, LABEL_DRIFT, LABEL_ISSUES, LABEL_NOISE_CHECK,
                CLASSIFICATION_RESULTS, AUDIT_SUMMARY, DUPLICATES, VARIANTS_COMPARISON, PREPARATIONS, BENCHMARKS)

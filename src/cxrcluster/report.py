"""The one page a researcher opens: ``reports/index.html``.

It gives the headline (the pooled label change, and the change within one
source when one was clustered on its own), links the results table, the
within-source results, the drift and label-issue tables (with the
planted-noise check's headline), the audit, every figure (shown
inline) and the executed notebooks rendered to HTML, and says in its first line
whether the data is the synthetic demo set. It only links files that exist, so
it can be rebuilt after any part of the pipeline.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

from cxrcluster import atomic, data, label_issues, products, results, sources


def _rel(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path, base)).as_posix()


def _link(path: Path, base: Path, text: str | None = None) -> str:
    return f'<a href="{html.escape(_rel(path, base))}">{html.escape(text or path.name)}</a>'


def _source_section(pooled, within, reports: Path, within_csv: Path) -> list[str]:
    """Disease or hospital: what the runs follow, and each within-source run beside its pooled run."""
    parts = ["<h3>Disease or hospital?</h3>"]
    if "follows" in pooled:
        kinds = sorted(set(pooled["source_kind"].dropna().astype(str)))
        follows = pooled.loc[pooled["status"].map(results.is_ok), "follows"].fillna("").astype(str)
        counts = ", ".join(f"{name or 'n/a'}: {n}" for name, n in follows.value_counts().items())
        said = {"source": "named by the data", "proxy": "a PROXY: file signatures, not known hospitals",
                "none": "unknown"}
        where = "; ".join(said.get(kind, kind) for kind in kinds)
        parts.append(f"<p>The images' sources: {html.escape(where)}. What the ok runs follow beyond chance "
                     f"({html.escape(counts or 'none')}): {html.escape(sources.FOLLOWS_RULE)}. When every class "
                     "comes from one source, no statistic of the pooled clustering separates a disease from its only "
                     "hospital; the within-source runs are the evidence.</p>")
    if within is None:
        return parts
    if within.empty:
        parts.append(f"<p>{_link(within_csv, reports)}: no source was clustered on its own (none is known, or none "
                     f"holds two classes of at least {sources.MIN_CLASS_IMAGES} images).</p>")
        return parts
    parts.append(f"<p>{_link(within_csv, reports)}: every source holding two classes or more, clustered on its own "
                 "(no hospital can separate its clusters), beside the pooled run; each change beside its own "
                 "chance level.</p>")
    parts.append(sources.pooled_and_within(pooled, within).to_html(index=False, na_rep="", border=0))
    return parts


def render_notebooks(folder: str | os.PathLike) -> list[Path]:
    """Render each executed notebook in ``folder`` to HTML beside it, where the HTML is missing or older.

    All in one process when the index is written, rather than one ``jupyter nbconvert`` per step:
    the converter's start (about 3 s) was most of each rendering's cost.

    Returns
    -------
    list of pathlib.Path
        Every notebook's HTML in the folder, sorted.
    """
    folder = Path(folder)
    stale = [nb for nb in sorted(folder.glob("*.ipynb"))
             if not nb.with_suffix(".html").is_file()
             or nb.with_suffix(".html").stat().st_mtime_ns < nb.stat().st_mtime_ns]
    if stale:
        import nbformat
        from nbconvert import HTMLExporter

        exporter = HTMLExporter()
        for nb in stale:
            body, _ = exporter.from_notebook_node(nbformat.read(nb, as_version=4))
            with atomic.atomic_open(nb.with_suffix(".html"), "w", encoding="utf-8") as fh:
                fh.write(body)
    return sorted(folder.glob("*.html"))


def build_index(out_root: str | os.PathLike, title: str = "Chest X-ray clustering study") -> Path:
    """Write ``<out_root>/reports/index.html`` linking every output that exists.

    Parameters
    ----------
    out_root : path-like
        The folder holding ``clustering_results.csv``, ``label_drift.csv`` and
        ``reports/`` (the project root unless ``OUT`` was set).
    title : str
        Page title.

    Returns
    -------
    pathlib.Path
        The index page.
    """
    root = Path(out_root)
    index = products.INDEX.under(root)
    reports = index.parent
    parts = [f"<h1>{html.escape(title)}</h1>"]

    dataset_json = products.DATASET.under(root)
    if dataset_json.is_file():
        ds = data.read_dataset_description(dataset_json)
        if ds.get("synthetic"):
            parts.append('<p class="warn">SYNTHETIC DEMO DATA: these results show that the pipeline runs; '
                         "they are evidence of nothing about chest X-rays.</p>")
        classes = ", ".join(f"{k}: {v}" for k, v in ds.get("classes", {}).items())
        parts.append(f"<p>Data: <code>{html.escape(ds['data_dir'])}</code> — {ds['n_images']} images ({classes}).</p>")

    confound = products.CONFOUND.under(root)
    if confound.is_file():
        c = products.CONFOUND.read(confound)
        cls = "warn" if c.get("confounded") else "ok"
        parts.append(f'<p class="{cls}">{html.escape(c.get("message", ""))}</p>')

    parts.append("<h2>Tables</h2><ul>")
    linked = [(product.under(root), product.what) for product in products.INDEX_TABLES]
    linked.insert(-1, (products.INDEX.under(root / "masked"), "the report of the lung-masked variant"))
    for path, what in linked:
        if path.is_file():
            parts.append(f"<li>{_link(path, reports)}: {html.escape(what)}</li>")
    parts.append("</ul>")

    results_csv = products.CLUSTERING_RESULTS.under(root)
    if results_csv.is_file():
        pooled = results.read_results(results_csv)
        within_csv = products.WITHIN_SOURCE_RESULTS.under(root)
        within = products.WITHIN_SOURCE_RESULTS.read(within_csv) if within_csv.is_file() else None
        table = results.readable_table(pooled)
        parts.append("<h2>Results</h2>")
        headline = sources.headline(pooled, within)
        if headline:
            parts.append(f"<p><b>Headline.</b> {html.escape(headline)}</p>")
        parts.append("<p>Change: images whose cluster, after the best one-to-one matching of clusters to "
                     "classes, is not their class. Chance: what the same cluster sizes score shuffled at "
                     "random; p: how often chance does as well. Only runs with status <b>ok</b> are results: "
                     "a <b>degenerate</b> run finished without grouping the images (see why).</p>")
        parts.append(table.to_html(index=False, na_rep="", border=0))
        parts += _source_section(pooled, within, reports, within_csv)

    check_csv = products.LABEL_NOISE_CHECK.under(root)
    if check_csv.is_file():
        check = products.LABEL_NOISE_CHECK.read(check_csv)
        first = float(check["fraction"].min())
        _, why = label_issues.headline_signal(check, first)
        parts.append("<h2>Label issues</h2>")
        parts.append(f"<p>{_link(products.LABEL_ISSUES.under(root), reports)} ranks every image by "
                     f"{html.escape(label_issues.COMBINE_RULE)}. Planted-noise check, {first:.0%} of the labels "
                     f"flipped: {html.escape(why)}. Planted flips are easier to find than real, ambiguous cases.</p>")
        table = label_issues.on_all_images(check).pivot(index="signal", columns="fraction", values=[
            "roc_auc", "average_precision", "precision_at_k"]).round(3)
        parts.append(table.reindex([s for s in label_issues.SIGNALS if s in table.index]).to_html(border=0))
        unexplained = check[(check["subset"] == "not_source_explained") & (check["fraction"] == first)]
        if len(unexplained):
            auc = unexplained.set_index("signal")["roc_auc"]
            parts.append(f"<p>Without the images whose suggested class is their source's most frequent class "
                         f"(column <code>source_explained</code>: the flag may be the hospital speaking), "
                         f"{int(unexplained['n_images'].iloc[0])} images: ROC AUC of the combined rank "
                         f"{auc.get('combined', float('nan')):.3f}, drift {auc.get('drift', float('nan')):.3f}, "
                         f"cleanlab {auc.get('cleanlab', float('nan')):.3f}.</p>")

    figures = sorted((reports / "figures").glob("*.png"))
    if figures:
        parts.append("<h2>Figures</h2>")
        for fig in figures:
            parts.append(f'<figure><img src="{html.escape(_rel(fig, reports))}" alt="{html.escape(fig.stem)}">'
                         f"<figcaption>{_link(fig, reports)}</figcaption></figure>")

    notebooks = render_notebooks(reports / "notebooks")
    if notebooks:
        parts.append("<h2>Executed notebooks</h2><ul>")
        parts += [f"<li>{_link(nb, reports, nb.stem)}</li>" for nb in notebooks]
        parts.append("</ul>")

    page = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
            "img{max-width:100%;border:1px solid #ddd}figure{margin:1.5em 0}"
            ".warn{background:#fde2e1;border-left:6px solid #c0392b;padding:.6em;font-weight:bold}"
            ".ok{background:#e3f4e1;border-left:6px solid #2e7d32;padding:.6em}"
            "table{border-collapse:collapse;font-size:90%}td,th{padding:2px 8px;border-bottom:1px solid #eee}"
            "</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
    with atomic.atomic_open(index, "w", encoding="utf-8") as fh:
        fh.write(page)
    return index


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Write reports/index.html under OUT.")
    parser.add_argument("out_root", nargs="?", default=".")
    args = parser.parse_args(argv)
    print(f"wrote {build_index(args.out_root)}")


if __name__ == "__main__":
    main()

import json
import os

import pandas as pd

from cxrcluster import report


def test_index_links_what_exists_and_flags_synthetic_data(tmp_path):
    (tmp_path / "reports" / "figures").mkdir(parents=True)
    (tmp_path / "reports" / "notebooks").mkdir()
    (tmp_path / "reports" / "dataset.json").write_text(json.dumps(
        {"data_dir": "/x/demo", "synthetic": True, "n_images": 6, "classes": {"COVID": 2, "NORMAL": 4}}))
    (tmp_path / "reports" / "figures" / "heat.png").write_bytes(b"png")
    (tmp_path / "reports" / "notebooks" / "04-report.html").write_text("<html></html>")
    pd.DataFrame({"model": ["M"], "clustering": ["KMeans"], "label_percentage_change": [12.5],
                  "raw_label_change": [80.0], "ari": [0.6], "nmi": [0.5], "status": ["ok"]}).to_csv(
        tmp_path / "clustering_results.csv", index=False)
    page = report.build_index(tmp_path).read_text()
    assert "SYNTHETIC DEMO DATA" in page
    assert 'href="../clustering_results.csv"' in page and 'src="figures/heat.png"' in page
    assert 'href="notebooks/04-report.html"' in page
    assert "label_drift.csv" not in page  # not written yet, so not linked
    assert "12.5" in page


def test_index_of_real_data_is_not_flagged(tmp_path):
    (tmp_path / "reports" / "audit").mkdir(parents=True)
    (tmp_path / "reports" / "dataset.json").write_text(json.dumps(
        {"data_dir": "/data", "synthetic": False, "n_images": 3, "classes": {"COVID": 3}}))
    (tmp_path / "reports" / "audit" / "confound.json").write_text(json.dumps(
        {"confounded": True, "message": "WARNING - SOURCE CONFOUND: format predicts class"}))
    page = report.build_index(tmp_path).read_text()
    assert "SYNTHETIC" not in page
    assert 'class="warn">WARNING - SOURCE CONFOUND' in page


def test_executed_notebooks_are_rendered_once_with_the_index(tmp_path):
    import nbformat

    folder = tmp_path / "reports" / "notebooks"
    folder.mkdir(parents=True)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('hi')", outputs=[
        nbformat.v4.new_output("stream", text="a distinctive output line\n")])])
    nbformat.write(nb, folder / "03-cluster-M.ipynb")
    report.build_index(tmp_path)
    rendered = folder / "03-cluster-M.html"
    assert "a distinctive output line" in rendered.read_text()
    assert 'href="notebooks/03-cluster-M.html"' in (tmp_path / "reports" / "index.html").read_text()
    # up to date: not rendered again; a re-executed notebook is
    rendered.write_text("kept")
    report.build_index(tmp_path)
    assert rendered.read_text() == "kept"
    later = rendered.stat().st_mtime_ns + 10**9
    os.utime(folder / "03-cluster-M.ipynb", ns=(later, later))
    report.build_index(tmp_path)
    assert "a distinctive output line" in rendered.read_text()
    assert sorted(p.name for p in folder.iterdir()) == ["03-cluster-M.html", "03-cluster-M.ipynb"]  # no temporaries

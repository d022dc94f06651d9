import json

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

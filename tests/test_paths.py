from pathlib import Path

from cxrcluster import paths


def test_resolve_relative_to_project_root_and_normalised():
    assert paths.resolve("features") == paths.PROJECT_ROOT / "features"
    assert paths.resolve("../shared/data") == paths.PROJECT_ROOT.parent / "shared" / "data"
    assert paths.resolve("/abs/x/../y") == Path("/abs/y")
    assert paths.resolve("a", root="/r") == Path("/r/a")

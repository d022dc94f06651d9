"""Tests of the benchmark harness (a package, so that its conftest is not the ``conftest`` of ``tests/``)."""

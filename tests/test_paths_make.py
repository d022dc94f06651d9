"""Paths make cannot carry: a '$' is refused at parse time, before any work; quotes and spaces still parse."""

import hashlib
import subprocess
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ALIASES = PROJECT_ROOT / ".make" / "aliases"


def make(*args):
    # no shell: the '$' reaches make as it is
    return subprocess.run(["make", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("variable, name", [("DATA_DIR", "cost $5 data"), ("OUT", "results $x")])
def test_a_dollar_in_a_path_is_refused_by_name_before_any_work(tmp_path, variable, name):
    dollared = tmp_path / name
    paths = {"DATA_DIR": tmp_path / "data", "OUT": tmp_path / "out", variable: dollared}
    proc = make("all", *(f"{k}={v}" for k, v in paths.items()))
    assert proc.returncode != 0
    assert f"{variable} holds a '$' ({variable}={dollared})" in proc.stderr, proc.stderr
    assert "make expands in variables" in proc.stderr
    escaped = str(dollared).replace("$", "\\$")
    assert f'ln -s "{escaped}" "$HOME/cxr-data" then make ... {variable}="$HOME/cxr-data"' in proc.stderr
    assert list(tmp_path.iterdir()) == []  # neither OUT nor the dollared folder was made
    # the space in the path did not reach the aliasing either
    assert not (ALIASES / hashlib.md5(str(dollared).encode()).hexdigest()[:16]).exists()


def test_a_path_with_a_quote_and_a_space_still_parses(tmp_path):
    proc = make("-n", "help", f"DATA_DIR={tmp_path}/Anna's data")
    assert proc.returncode == 0, proc.stderr
    assert "Variables (make all VAR=value)" in proc.stdout, proc.stdout

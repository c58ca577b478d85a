"""Project hygiene: the package is what the notebooks export, notebooks are clean, README is current."""
import subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _snapshot(paths):
    return {p: p.read_bytes() for p in paths}


def _check_unchanged(cmd, files_glob, what):
    files = sorted(ROOT.glob(files_glob))
    before = _snapshot(files)
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    after_files = sorted(ROOT.glob(files_glob))
    after = _snapshot(after_files)
    changed = [str(p.relative_to(ROOT)) for p in set(before) | set(after) if before.get(p) != after.get(p)]
    for p, data in before.items():  # leave the tree as it was
        p.write_bytes(data)
    assert not changed, f"{what} changed {changed}"


def test_export_leaves_no_diff():
    _check_unchanged([str(BIN / "nbdev-export")], "patchddm/**/*.py", "nbdev-export (edit nbs/, then export)")


def test_clean_leaves_no_diff():
    _check_unchanged([str(BIN / "nbdev-clean")], "nbs/**/*.ipynb", "nbdev-clean (run it and commit)")


def test_readme_is_current():
    r = subprocess.run([sys.executable, "tools/make_readme.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_cli_help_lists_commands():
    r = subprocess.run([sys.executable, "-m", "patchddm.cli", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for cmd in ("phantoms", "preprocess"):
        assert cmd in r.stdout

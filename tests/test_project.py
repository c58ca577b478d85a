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


# The pipeline order of the modules (CONTRIBUTING, "Layout"): a module may import only those before it.
PIPELINE = ("core", "data", "phantoms", "patching", "model", "diffusion", "metrics", "modes", "profiling", "train",
            "predict", "evaluate", "viewer", "demo", "experiments", "cli")
INFERENCE = ("modes", "profiling", "predict", "metrics", "evaluate", "viewer")


def _package_imports(path: Path) -> set[str]:
    "Names of the patchddm modules that `path` imports (relative or absolute, at any depth)."
    import ast
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module: out.add(node.module.split(".")[0])
            elif node.module and node.module.startswith("patchddm."): out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("patchddm.")}
    return out


def test_modules_follow_the_pipeline_order():
    mods = sorted(p.stem for p in (ROOT / "patchddm").glob("*.py") if not p.stem.startswith("_"))
    assert sorted(PIPELINE) == mods, "a module was added or removed: place it in PIPELINE"
    for i, m in enumerate(PIPELINE):
        later = _package_imports(ROOT / "patchddm" / f"{m}.py") & set(PIPELINE[i + 1:])
        assert not later, f"patchddm/{m}.py imports later stage(s) {sorted(later)}"
        if m in INFERENCE: assert "train" not in _package_imports(ROOT / "patchddm" / f"{m}.py"), m


def test_notebook_numbers_follow_the_pipeline():
    nbs = sorted(p.name for p in (ROOT / "nbs").glob("[0-9][0-9]_*.ipynb"))
    assert [n.split("_", 1)[1][:-6] for n in nbs] == list(PIPELINE), nbs
    assert len({n[:2] for n in nbs}) == len(nbs), "notebook numbers must be unique"


def test_functions_are_small():
    import ast
    long = []
    for p in (ROOT / "patchddm").glob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                long.append(f"{p.name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long

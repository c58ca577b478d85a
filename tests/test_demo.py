"""The demo end to end (slow, `make demo-check`) and its report notebook through papermill (fast)."""
import json, subprocess, sys
from pathlib import Path

import nbformat
import pytest

from patchddm.demo import DemoConfig, run_demo

TINY = dict(n_cases=6, train=dict(steps=6, val_every=6), sample_steps=2, ensemble=2)   # over DEMO_TRAIN (tiny, 32³)


def test_report_notebook_on_tiny_results(tmp_path):
    "A tiny demo run, then the report notebook executed by papermill on its folder: tables and figures present."
    out = tmp_path / "demo"
    s = run_demo(out, DemoConfig(**TINY, report=True), progress=False, quiet=True)
    assert s["finished"] and (out / "report.html").stat().st_size > 10_000
    nb = nbformat.read(out / "report.ipynb", as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) >= 3, "training curve, ensemble curve and qualitative figure expected"
    html = "".join(o["data"].get("text/html", "") for o in outputs if "data" in o)
    assert "BraTS20_Training" in html  # the per-case metrics table
    assert json.loads((out / "demo.json").read_text())["metrics"]["n"] >= 1


@pytest.mark.slow
def test_demo_cli_end_to_end(tmp_path):
    "`patchddm demo` with tiny settings: every stage, a report, and a second call that reuses everything."
    out = tmp_path / "demo"
    args = [sys.executable, "-m", "patchddm.cli", "demo", str(out), "--n-cases", "6", "--preset", "tiny",
            "--steps", "6", "--set", "val_every=6", "--sample-steps", "2", "--ensemble", "2"]
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    for stage in ("[1/6]", "[2/6]", "[3/6]", "[4/6]", "[5/6]", "[6/6]"):
        assert stage in r.stdout
    assert (out / "report.html").is_file() and (out / "metrics.csv").is_file()
    r2 = subprocess.run(args, capture_output=True, text=True)
    assert r2.returncode == 0 and "reused" in r2.stdout
    r3 = subprocess.run(args[:-1] + ["3"], capture_output=True, text=True)   # other settings → one-line error
    assert r3.returncode == 1 and r3.stderr.strip().count("\n") == 0 and "other settings (ensemble)" in r3.stderr

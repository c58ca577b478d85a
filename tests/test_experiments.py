"""End-to-end: the ablation notebook executed by papermill for two modes, then the report, on the quick grid.

`run_ablations(quick=True)` trains the tiny network for a few steps on ten 8 mm phantoms in a 32³ cube, so the
numbers mean nothing; what is checked is the plumbing: one executed notebook and one results folder per mode, the
report collecting a row per mode in every table, skipping finished runs, refusing changed settings, and one-line
errors from inside a notebook.
"""
import json, subprocess, sys
from pathlib import Path

import pandas as pd
import pytest

from patchddm.core import PatchDDMError

MODES = ("patchddm", "halfres")


@pytest.fixture(scope="module")
def quick_root(tmp_path_factory, phantom_data):
    "Two quick ablation runs and their report under one results root (the session's phantoms as data)."
    from patchddm.experiments import run_ablations
    root = tmp_path_factory.mktemp("ablations")
    summary = run_ablations(root, modes=MODES, quick=True, progress=False, data_dir=str(phantom_data.raw))
    return root, summary


def test_each_mode_has_an_executed_notebook_and_results(quick_root):
    root, summary = quick_root
    assert {m: v["status"] for m, v in summary["modes"].items()} == {m: "ran" for m in MODES}
    for m in MODES:
        d = root / m
        nb = json.loads((d / "ablation.ipynb").read_text())
        injected = [c for c in nb["cells"] if "injected-parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(injected) == 1 and f'mode = "{m}"' in "".join(injected[0]["source"])
        assert not any(o.get("output_type") == "error" for c in nb["cells"] for o in c.get("outputs", []))
        rec = json.loads((d / "results.json").read_text())
        assert rec["mode"] == m and rec["params"]["train"]["preset"] == "tiny" and rec["params"]["train"]["steps"] == 4
        assert (d / "run" / "best.pt").is_file() and (d / "grid.csv").is_file() and (d / "profile.json").is_file()
        for f in ("fig4.png", "fig5.png", "fig8.png"):
            assert (d / "figures" / f).stat().st_size > 1000
    # the data was prepared once, shared by both runs, from the given folder
    assert (root / "data" / "prep" / "prep.json").is_file() and not (root / "data" / "raw").exists()


def test_report_tables_have_a_row_per_mode(quick_root):
    from patchddm.experiments import collect_results, table1_vs_paper, table2_vs_paper
    root, summary = quick_root
    res = collect_results(root)
    for key in ("runs", "table1", "table2"):
        assert sorted(res[key].index) == sorted(MODES), key
    assert sorted(res["table3"].index.get_level_values(0).unique()) == sorted(MODES)
    assert set(res["grid"]["mode"]) == set(MODES) and set(res["grid"]["solver"]) == {"ddim", "dpm++2m"}
    assert sorted(res["ensemble"]["n"].unique()) == [1, 2]
    assert res["table2"]["n"].tolist() == [1, 1]                      # 5 phantoms: one test case
    assert res["log"].dropna(subset=["val_dice"]).groupby("mode").size().to_dict() == {m: 2 for m in MODES}
    assert {"HalfRes", "PatchDDM"} <= set(table2_vs_paper(res).index)
    assert not table1_vs_paper(res).loc[["HalfRes", "PatchDDM"], ("this run", "Memory (MB) training")].isna().any()
    # the executed report shows the same tables, and the HTML page exists
    rep = json.loads((root / "report.ipynb").read_text())
    outs = "".join("".join(o.get("data", {}).get("text/plain", o.get("text", ""))) for c in rep["cells"]
                   for o in c.get("outputs", []))
    assert "PatchDDM" in outs and "HalfRes" in outs and "Traceback" not in outs
    assert (root / "report.html").stat().st_size > 10_000
    assert summary["html"] == str(root / "report.html")


def test_rerun_skips_finished_runs_and_refuses_changed_settings(quick_root, phantom_data):
    from patchddm.experiments import run_ablations
    root, _ = quick_root
    before = {m: (root / m / "results.json").stat().st_mtime_ns for m in MODES}
    again = run_ablations(root, modes=MODES, quick=True, progress=False, report=False, data_dir=str(phantom_data.raw))
    assert {m: v["status"] for m, v in again["modes"].items()} == {m: "skipped" for m in MODES}
    assert {m: (root / m / "results.json").stat().st_mtime_ns for m in MODES} == before
    with pytest.raises(PatchDDMError, match="finished run with other settings"):
        run_ablations(root, modes=("halfres",), quick=True, progress=False, seed=1, data_dir=str(phantom_data.raw))


def test_an_error_inside_the_notebook_is_one_line(tmp_path, phantom_data):
    from patchddm.experiments import run_ablations
    # the cache exists with another size: the notebook's data cell raises a PatchDDMError; it surfaces as one line
    from patchddm.data import PrepConfig, preprocess_dataset
    preprocess_dataset(phantom_data.raw, tmp_path / "data" / "prep", PrepConfig(size=64), progress=False)
    with pytest.raises(PatchDDMError) as e:
        run_ablations(tmp_path, modes=("patchddm",), quick=True, progress=False, report=False,
                      data_dir=str(phantom_data.raw))
    msg = str(e.value)
    assert "\n" not in msg and "ablation.ipynb" in msg and "size 64 (wanted 32)" in msg
    assert (tmp_path / "patchddm" / "ablation.ipynb").is_file()       # the partial notebook stays for inspection
    assert not (tmp_path / "patchddm" / "results.json").exists()


def test_papermill_cli_runs_the_ablation_template_as_is(tmp_path, phantom_data):
    "Plain `papermill TEMPLATE OUT -p NAME VALUE ...` runs the template with those values (its `parameters` tag is in the file)."
    from patchddm.demo import template_path
    out, prep = tmp_path / "halfres", tmp_path / "prep"
    out.mkdir()                                                          # papermill writes into an existing folder
    train = {"preset": "tiny", "patch": 16, "steps": 2, "warmup": 0, "val_every": 2, "val_steps": 1}
    grid = {"train": train, "sampling_steps": [1], "solvers": ["ddim"], "ensemble_sizes": [1]}
    cmd = [str(Path(sys.executable).parent / "papermill"), str(template_path("ablation.ipynb")), str(out / "ablation.ipynb"),
           "-p", "mode", "halfres", "-p", "size", "32", "-p", "spacing", "8.0", "-p", "main_steps", "1",
           "-p", "profile_repeats", "1", "-p", "out_dir", str(out), "-p", "data_dir", str(phantom_data.raw),
           "-p", "prep_dir", str(prep), "-y", json.dumps(grid), "--cwd", str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    params = json.loads((out / "params.json").read_text())
    assert params["mode"] == "halfres" and params["size"] == 32 and params["spacing"] == 8.0
    assert params["train"]["steps"] == 2 and params["train"]["preset"] == "tiny" and params["train"]["lr"] == 1e-3  # over GRID_TRAIN
    rec = json.loads((out / "results.json").read_text())
    assert rec["mode"] == "halfres" and rec["profile"]["mode"] == "halfres" and rec["main"] == {"solver": "ddim", "steps": 1}
    tc = json.loads((out / "run" / "config.json").read_text())["train"]
    assert (tc["mode"], tc["patch"], tc["steps"], tc["preset"]) == ("halfres", None, 2, "tiny")
    nb = json.loads((out / "ablation.ipynb").read_text())
    tags = [c.get("metadata", {}).get("tags", []) for c in nb["cells"]]
    assert ["parameters"] in tags and ["injected-parameters"] in tags   # the template's cell, then papermill's values
    assert tags.index(["parameters"]) + 1 == tags.index(["injected-parameters"])

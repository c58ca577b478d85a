"""Smoke test of the benchmarks: `benchmarks/run_all.py --quick` writes every result file with the expected keys.

No timing or ratio is asserted (benchmarks measure; they never assert), only that the files exist, parse, record
the machine and date, and hold the expected fields; and that existing results are not replaced without --overwrite.
"""
import csv, json, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_ALL = ROOT / "benchmarks" / "run_all.py"
MEASURED = ("patch_vs_full", "skips", "memory_options", "monai_compare")
MAYBE_MEASURED = ("inference", "quality")        # "not measured" without patchddm.evaluate / a trained run
MACHINE_KEYS = {"cpu", "cores", "torch", "device", "device_name", "date"}
DOC_KEYS = {"name", "description", "date", "machine", "setup", "results", "targets", "notes", "rows"}
CSV_COLUMNS = {
    "patch_vs_full": {"P", "mode", "in_ch", "size", "peak_MiB", "seconds"},
    "skips": {"base", "skip", "peak_MiB", "params"},
    "memory_options": {"option", "amp", "checkpointing", "peak_MiB", "seconds", "memory_ratio", "time_ratio"},
    "monai_compare": {"size", "net", "params", "peak_MiB", "seconds"},
    "inference": {"call", "mode", "volume", "window", "peak_MiB", "seconds"},
    "speed": {"part", "item", "config", "size", "batch", "side", "peak_MiB", "seconds", "seconds_per_member"},
}
RESULT_KEYS = {
    "patch_vs_full": {"memory_ratio", "time_ratio", "memory_ratio_with_state"},
    "monai_compare": {"memory_ratio", "time_ratio"},
    "memory_options": {"memory_ratio", "time_ratio"},
}


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "results"
    r = subprocess.run([sys.executable, str(RUN_ALL), "--quick", "--out", str(out)], cwd=ROOT, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out


def _doc(out: Path, name: str) -> dict:
    doc = json.loads((out / f"{name}.json").read_text())
    assert DOC_KEYS <= set(doc), f"{name}.json lacks {DOC_KEYS - set(doc)}"
    assert doc["name"] == name
    assert MACHINE_KEYS <= set(doc["machine"]), f"{name}.json machine lacks {MACHINE_KEYS - set(doc['machine'])}"
    assert doc["date"][:2] == "20" and "T" in doc["date"]
    return doc


def _csv_columns(path: Path) -> set:
    with open(path, newline="") as fh: return set(next(csv.reader(fh), []))


@pytest.mark.parametrize("name", MEASURED)
def test_measured_benchmark_files(quick_results, name):
    doc = _doc(quick_results, name)
    assert doc["rows"], f"{name}: no measurements"
    assert all(r["peak_MiB"] > 0 for r in doc["rows"]), f"{name}: a peak memory is not positive"
    assert CSV_COLUMNS[name] <= _csv_columns(quick_results / f"{name}.csv")
    assert (quick_results / f"{name}.png").stat().st_size > 1000
    for res in doc["results"].values() if name in RESULT_KEYS else []:
        assert RESULT_KEYS[name] <= set(res), f"{name}: results lack {RESULT_KEYS[name] - set(res)}"
    assert doc["setup"]["quick"] is True


def test_skips_results(quick_results):
    r = _doc(quick_results, "skips")["results"]
    assert {"memory_ratio_concat_over_avg", "width_ratio_interpolated", "paper_width_ratio"} <= set(r)
    assert r["paper_width_ratio"] == 1.61


@pytest.mark.parametrize("name", MAYBE_MEASURED)
def test_optional_benchmark_files(quick_results, name):
    doc = _doc(quick_results, name)
    assert (quick_results / f"{name}.csv").exists()
    if doc["results"].get("status") == "not measured":
        assert doc["notes"], f"{name}: says 'not measured' without saying why"
    elif name == "inference":
        assert CSV_COLUMNS[name] <= _csv_columns(quick_results / f"{name}.csv")
        assert {"memory_ratio", "time_ratio", "masks_equal"} <= set(doc["results"]["ddim"])
        assert doc["results"]["dice"] == "n/a"                     # untrained network in the quick run


def test_speed_results(quick_results):
    "speed (issue 17): before (a git worktree of the baseline) and after, each from its own source tree."
    doc = _doc(quick_results, "speed")
    assert doc["setup"]["quick"] is True and CSV_COLUMNS["speed"] <= _csv_columns(quick_results / "speed.csv")
    assert (quick_results / "speed.png").stat().st_size > 1000
    r, base = doc["results"], doc["setup"]["baseline"]
    assert r["errors"] == [] and {"train", "forward", "segment", "headline"} <= set(r)
    assert all(row["peak_MiB"] > 0 and row["seconds"] > 0 for row in doc["rows"])
    sides = {row["side"] for row in doc["rows"]}
    assert "after" in sides
    for row in doc["rows"]:                                    # each side imported its own package
        if row["side"].startswith("after"): assert row["patchddm_file"].startswith(str(ROOT / "patchddm"))
    if r["baseline"] == "measured":                            # git and the revision are there (a checkout)
        assert "before" in sides and len(base["commit"]) == 40
        assert all(not row["patchddm_file"].startswith(str(ROOT)) for row in doc["rows"] if row["side"] == "before")
        assert not Path(base["path"]).exists()                 # the worktree was removed
        train = r["train"]["Q 16³"]
        assert {"before", "after", "time_ratio", "memory_ratio"} <= set(train) and train["time_ratio"] > 0
        seg = r["segment"]["32³"]["after / before"]
        assert {"time_ratio", "memory_ratio", "masks"} <= set(seg) and seg["masks"]["cases"]
    else:
        assert any("baseline not measured" in n for n in doc["notes"])
    assert any(h["quantity"].startswith("segment 32³") for h in r["headline"])
    after = r["forward"]["Q 32³ batch 1"]["after"]               # the profiler's share of the convolutions
    assert 0 < after["convolution_share"] < 1 and after["op_shares"]


def test_summary(quick_results):
    s = json.loads((quick_results / "summary.json").read_text())
    assert s["failed"] == [] and s["quick"] is True and MACHINE_KEYS <= set(s["machine"])
    benches = {r["benchmark"] for r in s["rows"]}
    assert set(MEASURED) | {"speed"} <= benches
    assert {"benchmark", "quantity", "measured", "target", "verdict"} <= _csv_columns(quick_results / "summary.csv")
    assert "| benchmark |" in (quick_results / "summary.md").read_text()


def test_refuses_to_overwrite(quick_results):
    before = (quick_results / "patch_vs_full.json").read_bytes()
    r = subprocess.run([sys.executable, str(RUN_ALL), "--quick", "--out", str(quick_results), "--only", "patch_vs_full"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "exists (pass --overwrite" in err[0] and "Traceback" not in r.stderr
    assert (quick_results / "patch_vs_full.json").read_bytes() == before

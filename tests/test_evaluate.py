"""Inference and evaluation end to end: `patchddm segment` / `evaluate` / `profile` on embedded phantoms.

The raw cases are the session's phantoms (`phantom_data`: five 4 mm cases of 50×59×48 voxels, seed 0). The run is a
`tiny` PatchDDM network trained for 3 steps on a cache of those cases resampled to 8 mm (32³), so that writing the
predictions back exercises the whole geometry restoration (unpad, resample to 4 mm, original affine and header).
The CLI commands `segment`, `evaluate` and `profile` are called as a user would: `python -m patchddm.cli ...`.
"""
import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from patchddm.core import PatchDDMError

ROOT = Path(__file__).resolve().parents[1]
FILES = ("mask.nii.gz", "prob.nii.gz", "var.nii.gz")


def _cli(*args, timeout=240, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", "patchddm.cli", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, **kw)


def _no_traceback(r: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in r.stderr, r.stderr


def _finished(case_dir: Path) -> bool:
    return all((case_dir / f).is_file() for f in FILES)


@pytest.fixture(scope="module")
def run_dir(phantom_data, tmp_path_factory) -> Path:
    "A tiny PatchDDM run (3 steps, seed 0) on the phantoms resampled to 8 mm and padded to 32³."
    from patchddm.data import PrepConfig, preprocess_dataset
    from patchddm.train import TrainConfig, train
    root = tmp_path_factory.mktemp("eval-run")
    preprocess_dataset(phantom_data.raw, root / "prep", PrepConfig(size=32, spacing=8), progress=False)
    train(TrainConfig(root / "prep", root / "run", preset="tiny", steps=3, val_every=3, val_steps=2, val_cases=1,
                      ckpt_every=3, log_every=1, seed=0, amp="none"), progress=False)
    return root / "run"


@pytest.fixture()
def raw(phantom_data, tmp_path) -> Path:
    "A private copy of the raw phantom cases."
    shutil.copytree(phantom_data.raw, tmp_path / "raw")
    return tmp_path / "raw"


@pytest.fixture(scope="module")
def segmented(run_dir, phantom_data, tmp_path_factory) -> Path:
    "`patchddm segment` of the five raw phantoms (DDIM 2 steps, 2 members, seed 0) → the prediction folder."
    out = tmp_path_factory.mktemp("segmented") / "pred"
    r = _cli("segment", run_dir, phantom_data.raw, out, "--steps", 2, "--ensemble", 2, "--seed", 0)
    assert r.returncode == 0, r.stderr
    _no_traceback(r)
    return out


def test_segment_writes_the_input_geometry(segmented, phantom_data):
    out = segmented
    cases = sorted(p for p in phantom_data.raw.iterdir() if p.is_dir())
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [c.name for c in cases]
    for c in cases:
        t1 = nib.load(str(c / f"{c.name}_t1.nii.gz"))
        for f in FILES:
            img = nib.load(str(out / c.name / f))
            assert img.shape == t1.shape, (c.name, f)
            np.testing.assert_allclose(img.affine, t1.affine, atol=1e-5)
            assert img.header.get_zooms() == t1.header.get_zooms()
        mask = np.asarray(nib.load(str(out / c.name / "mask.nii.gz")).dataobj)
        prob = np.asarray(nib.load(str(out / c.name / "prob.nii.gz")).dataobj)
        var = np.asarray(nib.load(str(out / c.name / "var.nii.gz")).dataobj)
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
        assert prob.dtype == np.float32 and 0 <= prob.min() and prob.max() <= 1
        assert var.dtype == np.float32 and 0 <= var.min() and var.max() <= 0.25 + 1e-6
        np.testing.assert_array_equal(mask, (prob > 0.5).astype(np.uint8))
    settings = json.loads((out / "segment.json").read_text())
    assert (settings["steps"], settings["ensemble"], settings["seed"], settings["mode"]) == (2, 2, 0, "patchddm")


def test_segment_refuses_to_overwrite_without_the_flag(run_dir, segmented, phantom_data, tmp_path):
    from patchddm.predict import segment
    out = tmp_path / "pred"
    shutil.copytree(segmented, out)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    r = _cli("segment", run_dir, phantom_data.raw, out, "--steps", 2, "--ensemble", 3)
    assert r.returncode != 0
    _no_traceback(r)
    lines = [l for l in r.stderr.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "ensemble: 2 → 3" in lines[0] and "--overwrite" in lines[0], r.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")} == before
    # a foreign non-empty folder is refused too, and left alone
    (tmp_path / "mine").mkdir(); (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(PatchDDMError, match="segment.json"):
        segment(run_dir, phantom_data.raw, tmp_path / "mine", steps=2, ensemble=2, progress=False)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    # with --overwrite every case is redone
    r = _cli("segment", run_dir, phantom_data.raw, out, "--steps", 2, "--ensemble", 3, "--overwrite")
    assert r.returncode == 0, r.stderr
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    assert set(after) == set(before) and all(after[p] != before[p] for p in before)
    assert json.loads((out / "segment.json").read_text())["ensemble"] == 3


def test_unknown_allocator_setting_is_one_line_before_any_work(run_dir, phantom_data, tmp_path):
    "PATCHDDM_ALLOCATOR takes 'system' or 'tuned': another value stops segment and train with one line, nothing written."
    for args in (["segment", run_dir, phantom_data.raw, tmp_path / "pred", "--steps", 1, "--ensemble", 1],
                 ["train", run_dir.parent / "prep", tmp_path / "run", "--preset", "tiny", "--steps", 1]):
        r = _cli(*args, env={"PATCHDDM_ALLOCATOR": "off"})
        assert r.returncode != 0, (args[0], r.stdout, r.stderr)
        _no_traceback(r)
        lines = [l for l in r.stderr.strip().splitlines() if l.startswith("error:")]
        assert len(lines) == 1 and "PATCHDDM_ALLOCATOR: unknown value 'off'" in lines[0], (args[0], r.stderr)
    assert not (tmp_path / "pred").exists() and not (tmp_path / "run").exists()


def test_interrupted_folder_run_resumes(run_dir, raw, tmp_path):
    out = tmp_path / "pred"
    cmd = [sys.executable, "-m", "patchddm.cli", "segment", str(run_dir), str(raw), str(out), "--steps", "4",
           "--ensemble", "4", "--seed", "3"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cases = sorted(p.name for p in raw.iterdir() if p.is_dir())
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if out.is_dir() and any(_finished(out / c) for c in cases): break
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL); proc.wait()
    finished = [c for c in cases if _finished(out / c)]
    assert finished, "no case finished before the kill"
    assert len(finished) < len(cases), "every case finished before the kill: make the work larger"
    # a killed run leaves complete case folders or none (at most a hidden .partial folder)
    assert all(_finished(out / c) or not (out / c).exists() for c in cases)
    mtimes = {p: p.stat().st_mtime_ns for c in finished for p in (out / c).iterdir()}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=480)
    assert r.returncode == 0, r.stderr
    assert all(_finished(out / c) for c in cases)
    assert {p: p.stat().st_mtime_ns for c in finished for p in (out / c).iterdir()} == mtimes   # skipped, untouched
    assert not [p for p in out.iterdir() if p.name.startswith(".")]                          # no leftovers


def test_bad_case_gets_one_line_and_the_others_finish(run_dir, raw, tmp_path):
    cases = sorted(p for p in raw.iterdir() if p.is_dir())
    bad = cases[2] / f"{cases[2].name}_flair.nii.gz"
    bad.write_bytes(bad.read_bytes()[:300])                    # truncated
    out = tmp_path / "pred"
    r = _cli("segment", run_dir, raw, out, "--steps", 2, "--ensemble", 1)
    assert r.returncode == 1, (r.returncode, r.stderr)
    _no_traceback(r)
    about_bad = [l for l in r.stderr.splitlines() if bad.name in l]
    assert len(about_bad) == 1 and about_bad[0].startswith("error: "), r.stderr
    for c in cases:
        assert _finished(out / c.name) == (c != cases[2]), c.name


def test_segment_function_summary_and_window(run_dir, raw, tmp_path):
    from patchddm.predict import segment
    out = tmp_path / "pred"
    (raw / "not-a-case").mkdir()
    s = segment(run_dir, raw, out, steps=2, ensemble=1, window=16, progress=False)
    assert len(s["done"]) == 5 and len(s["failed"]) == 1 and "not-a-case" in s["failed"][0]["error"]
    assert json.loads((out / "segment.json").read_text())["window"] == 16
    with pytest.raises(PatchDDMError, match="window: 16 → None"):
        segment(run_dir, raw, out, steps=2, ensemble=1, progress=False)
    with pytest.raises(PatchDDMError, match="input case folder"):
        segment(run_dir, raw / "BraTS20_Training_001", raw, steps=2, ensemble=1, progress=False, overwrite=True)


def test_evaluate_cli_lists_missing_and_flags_bad_files(segmented, phantom_data, tmp_path):
    from patchddm.evaluate import evaluate_dirs
    out = tmp_path / "pred"
    shutil.copytree(segmented, out)
    shutil.rmtree(out / "BraTS20_Training_004")
    csv = tmp_path / "metrics.csv"
    r = _cli("evaluate", out, phantom_data.raw, "--out", csv)
    assert r.returncode == 0, r.stderr
    _no_traceback(r)
    df = pd.read_csv(csv)
    assert len(df) == 5 and df.set_index("case_id").loc["BraTS20_Training_004", "status"] == "missing"
    ok = df[df.status == "ok"]
    assert len(ok) == 4 and ok["dice"].between(0, 1).all() and (ok["hd95"] >= 0).all()
    assert "BraTS20_Training_004" in r.stdout + r.stderr
    assert (tmp_path / "metrics.summary.csv").is_file()
    with pytest.raises(PatchDDMError, match="exists"):                                   # no silent overwrite
        evaluate_dirs(out, phantom_data.raw, out_csv=csv, progress=False)
    # a corrupt prediction: a one-line error naming it, non-zero exit, the CSV still lists every case
    (out / "BraTS20_Training_001" / "mask.nii.gz").write_bytes(b"garbage")
    r = _cli("evaluate", out, phantom_data.raw, "--out", tmp_path / "m2.csv")
    assert r.returncode == 1
    _no_traceback(r)
    lines = [l for l in r.stderr.splitlines() if "BraTS20_Training_001" in l and "mask.nii.gz" in l]
    assert len(lines) == 1 and "cannot read" in lines[0], r.stderr
    assert len(pd.read_csv(tmp_path / "m2.csv")) == 5


def test_profile_cli_writes_json(tmp_path):
    out = tmp_path / "profile.json"
    r = _cli("profile", "--mode", "halfres", "--preset", "tiny", "--size", 32, "--out", out)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["mode"] == "halfres" and res["train"]["input"] == 16 and res["inference"]["input"] == 16
    assert res["train"]["memory_mb"] > 0 and res["inference"]["seconds"] > 0


def test_evaluate_cli_lesionwise_uncertainty_and_labels(segmented, phantom_data, tmp_path):
    "--lesionwise --uncertainty add their columns and files; label maps give three regions; bad labels are one line."
    truth = tmp_path / "truth"
    shutil.copytree(phantom_data.raw, truth)
    csv = tmp_path / "m.csv"
    r = _cli("evaluate", segmented, truth, "--out", csv, "--lesionwise", "--uncertainty", "--rules", "metastases")
    assert r.returncode == 0, r.stderr
    _no_traceback(r)
    df = pd.read_csv(csv)
    assert len(df) == 5 and set(df["region"]) == {"WT"} and (df["status"] == "ok").all()
    assert df["lesion_dice"].between(0, 1).all() and df["unc_score"].between(0, 1).all() and df["ece"].between(0, 1).all()
    assert {"WT"} == set(pd.read_csv(tmp_path / "m.summary.csv", index_col=0).index)
    curves = pd.read_csv(tmp_path / "m.curves.csv")
    assert len(curves) == 5 * 5 and sorted(curves["tau"].unique()) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert (tmp_path / "m.reliability.csv").is_file() and "lesion-wise Dice" in r.stdout and "QU-BraTS" in r.stdout
    # the truth's label maps as predictions: three regions per case, perfect scores; 2023 labels in a 2020 case: one line
    pred = tmp_path / "labels"
    cases = sorted(p for p in truth.iterdir() if p.is_dir())
    for c in cases:
        (pred / c.name).mkdir(parents=True)
        shutil.copy(c / f"{c.name}_seg.nii.gz", pred / c.name / "mask.nii.gz")
    bad = pred / cases[1].name / "mask.nii.gz"
    img = nib.load(str(bad))
    nib.save(nib.Nifti1Image(np.where(np.asarray(img.dataobj) == 4, 3, np.asarray(img.dataobj)).astype(np.uint8), img.affine), str(bad))
    r = _cli("evaluate", pred, truth, "--out", tmp_path / "l.csv", "--lesionwise")
    assert r.returncode == 1
    _no_traceback(r)
    lines = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert any(str(bad) in l and "labels [3] outside the brats2020 convention" in l for l in lines), r.stderr
    df = pd.read_csv(tmp_path / "l.csv")
    assert df["case_id"].nunique() == 5 and (df[df.status == "ok"].groupby("case_id")["region"].apply(list) == [["WT", "TC", "ET"]] * 4).all()
    assert (df.loc[df.status == "ok", "dice"] == 1.0).all() and (df.loc[df.status == "ok", "lesion_dice"] == 1.0).all()

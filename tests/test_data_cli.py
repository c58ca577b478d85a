"""End-to-end tests of the data commands, run as `python -m patchddm.cli`:
`patchddm phantoms OUT_DIR [--n] [--resolution] [--seed] [--overwrite]` and
`patchddm preprocess DATA_DIR OUT_DIR [--size] [--spacing] [--seed] [--skip-bad] [--overwrite]`;
and the command's surface: `patchddm --version`, `patchddm train --help` (one option per TrainConfig field).

Small on purpose: 3 phantom cases at 4 mm (50×59×48 voxels) preprocessed to 64³.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CASE = "BraTS20_Training_{:03d}"


def cli(*args):
    "Run the patchddm CLI in a subprocess; return the CompletedProcess (text stdout/stderr)."
    return subprocess.run([sys.executable, "-m", "patchddm.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def cli_env(*args, **env):
    "`cli` with extra environment variables."
    import os
    return subprocess.run([sys.executable, "-m", "patchddm.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **env})


def snapshot(folder: Path) -> dict:
    "Every file under `folder` with its bytes (to prove a folder was left untouched)."
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_ok(r):
    assert r.returncode == 0, f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"


def assert_one_line_error(r, *contains):
    "Exit code 1, stderr is exactly one `error: ...` line (no traceback, no progress bar) holding `contains`."
    assert r.returncode == 1, f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    lines = r.stderr.replace("\r", "\n").strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for c in contains:
        assert c in lines[0], (c, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def raw3(tmp_path_factory) -> Path:
    "Three 4 mm phantom cases written by the CLI (shared by this module; copy before modifying)."
    out = tmp_path_factory.mktemp("cli") / "raw"
    r = cli("phantoms", out, "--n", 3, "--resolution", 4, "--seed", 0)
    assert_ok(r)
    return out


def test_phantoms_layout(raw3):
    cases = sorted(p.name for p in raw3.iterdir() if p.is_dir())
    assert cases == [CASE.format(i) for i in (1, 2, 3)]
    for c in cases:
        names = sorted(p.name for p in (raw3 / c).iterdir())
        assert names == sorted(f"{c}_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair", "seg"))
    info = json.loads((raw3 / "phantoms.json").read_text())
    assert (info["n"], info["resolution"], info["seed"], info["preprocess_size"]) == (3, 4, 0, 64)


def test_phantoms_refuses_existing_output_and_is_deterministic(raw3, tmp_path):
    out = tmp_path / "raw"
    shutil.copytree(raw3, out)
    before = snapshot(out)
    assert_one_line_error(cli("phantoms", out, "--n", 2, "--resolution", 4), "output folder is not empty", "--overwrite")
    assert snapshot(out) == before                                           # untouched
    assert_ok(cli("phantoms", out, "--n", 3, "--resolution", 4, "--seed", 0, "--overwrite"))
    assert snapshot(out) == before                                           # same seed → identical files


def test_preprocess(raw3, tmp_path):
    prep = tmp_path / "prep"
    r = cli("preprocess", raw3, prep, "--size", 64, "--seed", 0)
    assert_ok(r)
    assert "3 cases" in r.stdout
    info = json.loads((prep / "prep.json").read_text())
    assert info["cases"] == [CASE.format(i) for i in (1, 2, 3)] and info["skipped"] == []
    assert info["config"]["size"] == 64
    splits = json.loads((prep / "splits.json").read_text())
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == info["cases"]
    assert len(splits["val"]) == len(splits["test"]) == 1
    image = np.load(prep / "cases" / CASE.format(2) / "image.npy", mmap_mode="r")
    mask = np.load(prep / "cases" / CASE.format(2) / "mask.npy", mmap_mode="r")
    assert (image.shape, image.dtype, mask.shape, mask.dtype) == ((4, 64, 64, 64), np.float16, (64, 64, 64), np.uint8)
    assert 0 <= float(image.min()) and float(image.max()) <= 1 and mask.sum() > 0
    assert not r.stderr.strip()                                              # no progress bar when not a terminal
    # re-running without --overwrite fails and leaves the cache untouched; with it, the cache is replaced
    before = snapshot(prep)
    assert_one_line_error(cli("preprocess", raw3, prep, "--size", 64, "--seed", 5), "output folder is not empty")
    assert snapshot(prep) == before
    assert_ok(cli("preprocess", raw3, prep, "--size", 64, "--seed", 5, "--overwrite"))
    assert json.loads((prep / "splits.json").read_text())["seed"] == 5
    assert [p.name for p in tmp_path.iterdir()] == ["prep"]                  # no temporary folders left


def test_preprocess_bad_case_and_skip_bad(raw3, tmp_path):
    data = tmp_path / "raw"
    shutil.copytree(raw3, data)
    (data / CASE.format(2) / f"{CASE.format(2)}_t1ce.nii.gz").unlink()
    prep = tmp_path / "prep"
    assert_one_line_error(cli("preprocess", data, prep, "--size", 64), CASE.format(2), "missing t1ce",
                          "1 of 3 cases is bad", "--skip-bad")
    assert not prep.exists() or not any(prep.iterdir())
    r = cli("preprocess", data, prep, "--size", 64, "--skip-bad")
    assert_ok(r)
    assert "skipped 1" in r.stdout and CASE.format(2) in r.stdout
    info = json.loads((prep / "prep.json").read_text())
    assert info["cases"] == [CASE.format(1), CASE.format(3)]
    assert len(info["skipped"]) == 1 and "missing t1ce" in info["skipped"][0]


def test_preprocess_truncated_file(raw3, tmp_path):
    data = tmp_path / "raw"
    shutil.copytree(raw3, data)
    f = data / CASE.format(3) / f"{CASE.format(3)}_flair.nii.gz"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    assert_one_line_error(cli("preprocess", data, tmp_path / "prep", "--size", 64), f.name, "truncated or corrupt")
    assert not (tmp_path / "prep").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]             # no partial cache anywhere


def test_preprocess_size_too_small_and_spacing(raw3, tmp_path):
    assert_one_line_error(cli("preprocess", raw3, tmp_path / "small", "--size", 32), "does not fit the 32³ target cube")
    assert not (tmp_path / "small").exists()
    prep = tmp_path / "prep"
    assert_ok(cli("preprocess", raw3, prep, "--size", 32, "--spacing", 8))  # 8 mm: 25x30x24 fits 32³
    meta = json.loads((prep / "cases" / CASE.format(1) / "meta.json").read_text())
    assert meta["shape"] == [50, 59, 48] and meta["resampled_shape"] == [25, 30, 24] and meta["target_spacing"] == 8


def test_preprocess_empty_input(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(cli("preprocess", tmp_path / "empty", tmp_path / "prep"), "empty: no BraTS cases found")
    assert not (tmp_path / "prep").exists()


def test_shared_phantom_data_fixture(phantom_data):
    "The session fixture of conftest.py (used by other stages' tests) gives a readable 64³ cache of 5 cases."
    from patchddm.data import PreparedDataset
    ds = PreparedDataset(phantom_data.prep)
    assert (len(ds), ds.size, phantom_data.n, phantom_data.size) == (5, 64, 5, 64)
    assert (len(ds.split("train")), len(ds.split("val")), len(ds.split("test"))) == (3, 1, 1)
    image, mask, meta = ds.load(ds.split("val")[0])
    assert image.shape == (4, 64, 64, 64) and mask.shape == (64, 64, 64) and meta["shape"] == [50, 59, 48]
    assert len([p for p in phantom_data.raw.iterdir() if p.is_dir()]) == 5


def test_version():
    import patchddm
    from importlib.metadata import version
    r = cli("--version")
    assert_ok(r)
    assert r.stdout.strip() == f"patchddm {version('patchddm')}" and version("patchddm") == patchddm.__version__
    assert r.stderr == ""


def test_train_help_lists_every_setting():
    "Each TrainConfig field is a `patchddm train` option (positional for the two folders) with its help text."
    from dataclasses import fields
    from patchddm.train import TrainConfig
    r = cli_env("train", "--help", COLUMNS="200")
    assert_ok(r)
    flat = " ".join(r.stdout.split())
    assert "[prep_dir] [run_dir]" in flat
    for f in fields(TrainConfig):
        if f.name not in ("prep_dir", "run_dir"): assert f"--{f.name.replace('_', '-')} " in flat, f.name
        assert f.metadata["help"] and f.metadata["help"][:40] in flat, f.name
    for opt in ("--steps", "--mode", "--preset", "--patch", "--lr", "--val-every", "--no-flip", "--resume", "--overwrite"):
        assert opt + " " in flat, opt


def test_train_option_errors_are_one_line(tmp_path):
    assert_one_line_error(cli("train", tmp_path / "nowhere", tmp_path / "run", "--steps", "0"), "steps=0")
    assert_one_line_error(cli("train", tmp_path / "nowhere", tmp_path / "run", "--preset", "tiny"),
                          "preprocessed cache not found")
    assert not (tmp_path / "run").exists()

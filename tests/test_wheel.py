"""A wheel install runs the main job (slow: `pytest -q -m slow tests/test_wheel.py`, about 5 minutes on 2 cores).

The wheel is built from a copy of the checkout (so no build/ folder lands in it), installed with pip into a fresh
venv outside the repository (torch first, pinned as the Makefile pins it), and `patchddm demo`, `patchddm ablate
--quick` and `patchddm segment` run from an empty folder with tiny settings. Nothing of the checkout is on the
path: the templates come from the installed package (`patchddm.templates`).
"""
import json, os, shutil, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TORCH = os.environ.get("TORCH", "torch==2.13.0")   # the Makefile's pin (GPU users override it the same way)


def _run(cmd: list, cwd: Path, env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    "Run `cmd`, failing the test with the tail of its output when it exits non-zero."
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} → {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


def _source_copy(dest: Path) -> Path:
    "The checkout's tracked and not-ignored files (what a clone plus local edits holds), copied to `dest`."
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f)
    return dest


@pytest.mark.slow
def test_wheel_install_runs_demo_ablate_and_segment(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["JUPYTER_DATA_DIR"] = str(tmp_path / "jupyter")                   # no user kernelspec can point elsewhere
    venv, wheels, work = tmp_path / "venv", tmp_path / "wheels", tmp_path / "work"
    work.mkdir()
    _run([sys.executable, "-m", "venv", venv], tmp_path, env)
    py, bin_ = venv / "bin" / "python", venv / "bin"
    env["PATH"] = f"{bin_}{os.pathsep}{env.get('PATH', '')}"
    pip = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    _run(pip + [TORCH], tmp_path, env)
    _run([py, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels, _source_copy(tmp_path / "src")], tmp_path, env)
    whl = sorted(wheels.glob("patchddm-*.whl"))
    assert len(whl) == 1, whl
    _run(pip + [whl[0]], tmp_path, env)

    # the package and its templates come from the venv, not from the checkout
    r = _run([py, "-c", "import patchddm, patchddm.demo as d; print(patchddm.__file__); "
                        "print(*(d.template_path(n) for n in d.TEMPLATES), sep='\\n')"], work, env)
    paths = r.stdout.split()
    assert len(paths) == 4 and all(p.startswith(str(venv)) for p in paths), paths
    assert not any(str(ROOT) in p for p in paths)

    # the main job from an empty folder, tiny settings
    _run([bin_ / "patchddm", "demo", "demo", "--n-cases", "6", "--steps", "6", "--set", "val_every=6",
          "--sample-steps", "2", "--ensemble", "2"], work, env)
    demo = json.loads((work / "demo" / "demo.json").read_text())
    assert demo["finished"] and demo["metrics"]["n"] >= 1 and demo["config"]["train"]["steps"] == 6
    assert (work / "demo" / "report.html").stat().st_size > 10_000

    # the ablation grid through its papermill template (one mode of the quick grid, then the report)
    _run([bin_ / "patchddm", "ablate", "abl", "--quick", "--modes", "halfres"], work, env)
    rec = json.loads((work / "abl" / "halfres" / "results.json").read_text())
    assert rec["mode"] == "halfres" and rec["params"]["train"]["steps"] == 4
    assert (work / "abl" / "report.html").stat().st_size > 10_000

    # segmentation of one raw case with the demo's network
    case = sorted(p for p in (work / "demo" / "data" / "raw").iterdir() if p.is_dir())[0]
    _run([bin_ / "patchddm", "segment", work / "demo" / "run", case, "seg", "--steps", "2", "--ensemble", "1"], work, env)
    assert (work / "seg" / case.name / "mask.nii.gz").is_file()

"""Faults of the machine under a run, injected for real (no mocks): a full disk, a read-only folder, a killed
DataLoader worker, a segment run killed part-way, and two segment runs on one folder.

How each fault is made:
- full disk: a file-size limit (`RLIMIT_FSIZE`, what `ulimit -f` sets) in the child process, which ignores
  SIGXFSZ so that the write fails with EFBIG instead of killing it; and, for the cache that must fill up after
  some finished cases, a real 1.2 MB tmpfs (ENOSPC; needs root, skipped otherwise), grown afterwards with
  `mount -o remount` as "space freed".
- read-only folder: `chmod 555`; as root, the child runs in a new user namespace (`unshare -U`), where root is an
  ordinary owner and the permission bits apply.
- killed worker / killed run: SIGKILL to the DataLoader worker (a child process of the training process, found
  in /proc) or to the segment process.
- concurrent runs: two `patchddm segment` processes on one output folder.

Every test runs the `patchddm` command as a user would and checks the one `error:` line, what is kept and that
running again continues. The slow ones (`-m slow`) train or render the papermill report.
"""
import json, os, resource, shutil, signal, subprocess, sys, time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CASE_FILES = ("mask.nii.gz", "prob.nii.gz", "var.nii.gz")


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------

def _limit(fsize: int | None):
    "preexec_fn: ignore SIGXFSZ (a write past the limit fails with EFBIG) and cap the size of every file written."
    def pre():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        if fsize is not None: resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    return pre


def _env(**extra) -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra)


def _cli(*args, fsize: int | None = None, prefix: tuple = (), env: dict | None = None, timeout: int = 600,
         cwd: Path = ROOT) -> subprocess.CompletedProcess:
    "Run `patchddm ARGS` in a child process (optionally under a file-size limit or a prefix such as `unshare -U`)."
    cmd = [*prefix, sys.executable, "-m", "patchddm.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or _env(),
                          preexec_fn=_limit(fsize), cwd=cwd)


def _popen(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "patchddm.cli", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)


def _lines(text: str) -> list[str]:
    "Non-empty lines, progress-bar redraws (\\r) split too."
    return [l.strip() for l in text.replace("\r", "\n").splitlines() if l.strip()]


def _error_line(r) -> str:
    "The one `error:` line of a failed command: exit status 1, exactly one such line, and it is the last one."
    assert r.returncode == 1, (r.returncode, r.stderr[-3000:])
    errors = [l for l in _lines(r.stderr) if l.startswith("error:")]
    assert len(errors) == 1 and _lines(r.stderr)[-1] == errors[0], r.stderr[-3000:]
    return errors[0]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _same_cache(a: Path, b: Path) -> None:
    "Caches `a` and `b` hold the same files, arrays byte for byte, JSON value for value (8 and 8.0 are equal)."
    sa, sb = _snapshot(a), _snapshot(b)
    assert sorted(sa) == sorted(sb)
    for k in sa: assert (json.loads(sa[k]) == json.loads(sb[k])) if k.endswith(".json") else sa[k] == sb[k], k


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _children(pid: int) -> list[int]:
    "PIDs of the direct children of `pid` (from /proc/*/stat)."
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try: fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError): continue
        if int(fields[1]) == pid: out.append(int(stat.parent.name))
    return out


def _wait_for(cond, p: subprocess.Popen, timeout: float = 300, what: str = "") -> None:
    deadline = time.time() + timeout
    while not cond():
        assert p.poll() is None, f"the run ended before {what}: {p.stderr.read()[-2000:]}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _same_weights(a: Path, b: Path) -> None:
    "Checkpoints `a` and `b` hold bitwise equal weights (train.param_sha) at the same step."
    from patchddm.modes import load_checkpoint, load_run
    from patchddm.train import param_sha
    assert load_checkpoint(a)["step"] == load_checkpoint(b)["step"]
    ra, rb = (load_run(p, device="cpu", use_ema=False) for p in (a, b))
    assert param_sha(ra.model) == param_sha(rb.model)


def _complete_or_absent(pred: Path, case_ids: list[str]) -> list[str]:
    "Assert every case folder of `pred` holds all its files, readable; return the finished case ids."
    import nibabel as nib
    done = []
    for cid in case_ids:
        d = pred / cid
        if not d.exists(): continue
        assert sorted(p.name for p in d.iterdir()) == sorted(CASE_FILES), (cid, list(d.iterdir()))
        for f in CASE_FILES: nib.load(d / f).get_fdata()
        done.append(cid)
    return done


# ---------------------------------------------------------------------------------------------------------------
# fixtures: the session phantoms (conftest.py) cached at 32³, and a 1-step tiny run to segment with
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def prep32(phantom_data, tmp_path_factory) -> Path:
    from patchddm.data import PrepConfig, preprocess_dataset
    out = tmp_path_factory.mktemp("faults") / "prep32"
    preprocess_dataset(phantom_data.raw, out, PrepConfig(size=32, spacing=8, seed=0), progress=False)
    return out


@pytest.fixture(scope="module")
def run_dir(prep32, tmp_path_factory) -> Path:
    from patchddm.train import TrainConfig, train
    run = tmp_path_factory.mktemp("faults-run") / "run"
    train(TrainConfig(prep32, run, preset="tiny", steps=1, val_every=0, ckpt_every=1, seed=0), progress=False)
    return run


def _train_args(prep: Path, run: Path, steps: int, *extra) -> list:
    return ["train", prep, run, "--preset", "tiny", "--steps", steps, "--val-every", 0, "--ckpt-every", 2,
            "--log-every", 1, "--seed", 0, "--devices", "cpu", *extra]


def _segment_args(run: Path, inp: Path, pred: Path, steps: int = 2, ensemble: int = 1) -> list:
    return ["segment", run, inp, pred, "--steps", steps, "--ensemble", ensemble, "--seed", 0, "--device", "cpu"]


# ---------------------------------------------------------------------------------------------------------------
# 1. a full disk
# ---------------------------------------------------------------------------------------------------------------

def test_disk_full_during_checkpoint_keeps_last_pt_and_resumes(prep32, tmp_path):
    "(a) last.pt of step 2 exists; the run resumed to 4 steps under a 1 MB file limit cannot write the 1.7 MB last.pt."
    run = tmp_path / "run"
    r = _cli(*_train_args(prep32, run, 2))
    assert r.returncode == 0, r.stderr[-2000:]
    before = (run / "last.pt").read_bytes()
    r = _cli(*_train_args(prep32, run, 4, "--resume"), fsize=1_000_000)
    line = _error_line(r)
    assert line == (f"error: {run / 'last.pt'}: disk full (File too large); last.pt of step 2 is kept; "
                    "free space, then continue with --resume"), line
    assert (run / "last.pt").read_bytes() == before                     # the previous good checkpoint, untouched
    assert _hidden(run) == []                                          # no half-written .last.pt.*.tmp
    r = _cli(*_train_args(prep32, run, 4, "--resume"))                # space freed
    assert r.returncode == 0, r.stderr[-2000:]
    r = _cli(*_train_args(prep32, tmp_path / "straight", 4))          # the same 4 steps without the fault
    assert r.returncode == 0, r.stderr[-2000:]
    _same_weights(run / "last.pt", tmp_path / "straight" / "last.pt")


def test_disk_full_during_preprocess_keeps_the_old_cache(phantom_data, tmp_path):
    "(b) `preprocess --overwrite` over a good cache under a 100 kB file limit: the old cache stays as it was."
    prep = tmp_path / "prep"
    shutil.copytree(phantom_data.prep, prep)
    before = _snapshot(prep)
    args = ["preprocess", phantom_data.raw, prep, "--size", phantom_data.size, "--seed", 0, "--overwrite"]
    line = _error_line(_cli(*args, fsize=100_000))
    partial = [p.name for p in tmp_path.iterdir() if p.name.startswith(".prep.partial-")]
    assert len(partial) == 1 and line == (
        f"error: {prep}: disk full (File too large); 0 finished case(s) are kept in {partial[0]} beside it for the next "
        "run (an existing cache is unchanged); free space, then run the same command again"), line
    assert _snapshot(prep) == before
    from patchddm.data import PreparedDataset
    assert len(PreparedDataset(prep)) == phantom_data.n                # still readable
    r = _cli(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert _snapshot(prep) == before                                   # rebuilt: the same bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prep"]      # partial folder swapped in, old one gone


@pytest.fixture
def tmpfs(tmp_path):
    "A 1.2 MB tmpfs mounted on tmp_path/disk (root only); yields (mount point, grow) where grow() frees space."
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode: pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()})")
    grow = lambda: subprocess.run(["mount", "-o", "remount,size=20m", str(mnt)], check=True)
    try: yield mnt, grow
    finally: subprocess.run(["umount", str(mnt)], check=True)


def test_disk_full_during_preprocess_resumes_finished_cases(phantom_data, prep32, tmpfs):
    "(b) a 1.2 MB disk fills up after three 32³ cases (~340 kB each): those are kept and reused by the next run."
    mnt, grow = tmpfs
    prep = mnt / "prep"
    args = ["preprocess", phantom_data.raw, prep, "--size", 32, "--spacing", 8, "--seed", 0]
    line = _error_line(_cli(*args))
    partial = [p for p in mnt.iterdir() if p.name.startswith(".prep.partial-")]
    assert len(partial) == 1 and line.startswith(f"error: {prep}: disk full (No space left on device); 3 finished case(s) "
                                                 f"are kept in {partial[0].name} beside it"), line
    assert not prep.exists()
    grow()
    r = _cli(*args)
    assert r.returncode == 0 and "(3 of them finished by an interrupted run)" in r.stdout, (r.stdout, r.stderr[-2000:])
    _same_cache(prep, prep32)                                          # the same cache as one uninterrupted run
    assert sorted(p.name for p in mnt.iterdir()) == ["prep"]


def test_disk_full_during_segment_keeps_finished_cases(phantom_data, run_dir, tmp_path):
    "(c) case 1 is segmented; the folder run under a 4 kB file limit cannot write case 2's 16 kB mask."
    pred, cases = tmp_path / "pred", sorted(p.name for p in phantom_data.raw.iterdir() if p.is_dir())
    r = _cli(*_segment_args(run_dir, phantom_data.raw / cases[0], pred))
    assert r.returncode == 0, r.stderr[-2000:]
    before = _snapshot(pred / cases[0])
    line = _error_line(_cli(*_segment_args(run_dir, phantom_data.raw, pred), fsize=4096))
    assert line == (f"error: {pred / cases[1]}: disk full (File too large); the finished cases are kept; free space, "
                    "then run the same command again to segment the rest"), line
    assert _complete_or_absent(pred, cases) == cases[:1] and _snapshot(pred / cases[0]) == before
    assert _hidden(pred) == []                                         # no partial case folder, lock released
    r = _cli(*_segment_args(run_dir, phantom_data.raw, pred))
    assert r.returncode == 0 and "4 cases segmented, 1 already done" in r.stdout, (r.stdout, r.stderr[-2000:])
    assert _complete_or_absent(pred, cases) == cases and _snapshot(pred / cases[0]) == before


@pytest.mark.slow
def test_disk_full_during_report_keeps_results_and_previous_report(tmp_path):
    "(d) a finished tiny demo; run again under a 100 kB file limit, its report (≥ 300 kB) cannot be written."
    out = tmp_path / "demo"
    args = ["demo", out, "--n-cases", 6, "--preset", "tiny", "--steps", 4, "--set", "val_every=4", "--sample-steps", 2,
            "--ensemble", 2]
    r = _cli(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    before = _snapshot(out)
    line = _error_line(_cli(*args, fsize=100_000))
    assert line == (f"error: {out / 'report.ipynb'}: disk full (File too large); the results and the previous report are "
                    "kept; free space, then run the same command again (finished stages are reused)"), line
    for f in ("report.ipynb", "report.html", "metrics.csv", "run/last.pt"):
        assert (out / f).read_bytes() == before[f], f
    assert _hidden(out) == []
    r = _cli(*args)
    assert r.returncode == 0 and "[6/6] report" in r.stdout, r.stderr[-2000:]
    assert "reused" in r.stdout and (out / "report.html").stat().st_size > 10_000


# ---------------------------------------------------------------------------------------------------------------
# 2. a read-only output folder or results_dir: one line before any work
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture
def read_only(tmp_path):
    "A folder without write permission, and the command prefix under which that holds for this user."
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    prefix = ()
    if os.geteuid() == 0:                        # root ignores permission bits, except as an owner in a user namespace
        if not shutil.which("unshare") or subprocess.run(["unshare", "-U", "true"]).returncode:
            pytest.skip("running as root without user namespaces: cannot make a folder read-only for this user")
        prefix = ("unshare", "-U")
    try: yield ro, prefix
    finally: ro.chmod(0o755)


@pytest.mark.parametrize("command", ["preprocess", "train", "segment", "demo", "ablate"])
def test_read_only_output_folder_is_one_line_before_any_work(command, phantom_data, prep32, run_dir, read_only):
    ro, prefix = read_only
    out = ro / "out"
    args = {"preprocess": ["preprocess", phantom_data.raw, out, "--size", 32, "--spacing", 8],
            "train": _train_args(prep32, out, 2),
            "segment": _segment_args(run_dir, phantom_data.raw, out),
            "demo": ["demo"], "ablate": ["ablate", "--quick"]}[command]   # demo, ablate: into <results_dir>/<command>
    t0 = time.time()
    r = _cli(*args, prefix=prefix, env=_env(PATCHDDM_RESULTS_DIR=str(out)))
    line = _error_line(r)
    target = {"demo": out / "demo", "ablate": out / "ablations"}.get(command, out)
    assert line == (f"error: {target}: cannot write into {ro} (Permission denied); choose a writable folder or change "
                    "its permissions"), line
    assert list(ro.iterdir()) == [] and time.time() - t0 < 120


# ---------------------------------------------------------------------------------------------------------------
# 3. a DataLoader worker killed mid-epoch
# ---------------------------------------------------------------------------------------------------------------

def test_killed_dataloader_worker_stops_with_one_line_and_resumes_bit_identically(prep32, tmp_path):
    run, steps = tmp_path / "run", 8
    p = _popen(*_train_args(prep32, run, steps, "--workers", 1))
    _wait_for(lambda: (run / "last.pt").exists(), p, what="the first checkpoint")
    workers = _children(p.pid)
    assert workers, "no DataLoader worker found"
    os.kill(workers[0], signal.SIGKILL)
    p.wait(timeout=120)
    r = subprocess.CompletedProcess(p.args, p.returncode, "", p.stderr.read())
    line = _error_line(r)
    from patchddm.modes import load_checkpoint
    kept = load_checkpoint(run / "last.pt")["step"]
    assert 2 <= kept < steps and line.startswith(f"error: {run}: a data-loading worker died: DataLoader worker (pid"), line
    assert str(workers[0]) in line, line
    assert line.endswith(f"last.pt of step {kept} is kept: continue with --resume (with fewer --workers if it happens again)")
    r = _cli(*_train_args(prep32, run, steps, "--workers", 1, "--resume"))
    assert r.returncode == 0, r.stderr[-2000:]
    r = _cli(*_train_args(prep32, tmp_path / "straight", steps, "--workers", 1))
    assert r.returncode == 0, r.stderr[-2000:]
    _same_weights(run / "last.pt", tmp_path / "straight" / "last.pt")


# ---------------------------------------------------------------------------------------------------------------
# 4. segment killed part-way; 5. two segment runs on one folder
# ---------------------------------------------------------------------------------------------------------------

def test_segment_killed_part_way_leaves_whole_cases_and_finishes_on_rerun(phantom_data, run_dir, tmp_path):
    pred, cases = tmp_path / "pred", sorted(p.name for p in phantom_data.raw.iterdir() if p.is_dir())
    args = _segment_args(run_dir, phantom_data.raw, pred, steps=10, ensemble=3)
    p = _popen(*args)
    _wait_for(lambda: (pred / cases[0]).is_dir(), p, what="the first case")
    p.send_signal(signal.SIGKILL); p.wait(timeout=60)
    finished = _complete_or_absent(pred, cases)                        # whole or absent, never a mask alone
    assert cases[0] in finished and len(finished) < len(cases), finished
    assert (pred / ".lock").exists()                                   # left by the killed run: stale (dead PID)
    r = _cli(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"{len(cases) - len(finished)} cases segmented, {len(finished)} already done" in r.stdout, r.stdout
    assert _complete_or_absent(pred, cases) == cases and _hidden(pred) == []


def test_second_segment_into_the_same_folder_is_refused(phantom_data, run_dir, tmp_path):
    pred = tmp_path / "pred"
    first = _popen(*_segment_args(run_dir, phantom_data.raw, pred, steps=100, ensemble=5))
    try:
        _wait_for(lambda: (pred / ".lock").exists(), first, what="the first run's lock")
        line = _error_line(_cli(*_segment_args(run_dir, phantom_data.raw, pred, steps=100, ensemble=5)))
        assert first.poll() is None, "the first run ended before the second was refused; give it more work"
        assert line.startswith(f"error: {pred}: in use by another segment run (pid {first.pid} on ") and line.endswith(
            f"wait for it to finish, or delete {pred / '.lock'} if that run is gone"), line
        assert json.loads((pred / ".lock").read_text())["pid"] == first.pid     # the first run's lock, untouched
    finally:
        first.kill(); first.wait()

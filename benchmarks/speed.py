"""Issue 17 (faster and leaner inference): speed and peak memory before and after, i.e. the project's code at a
baseline revision (default 1ee0148, the last commit before the speed work) against the working tree, for training
steps, network evaluations and whole `segment` runs, on 2 CPU threads (the issue's "2 CPU cores").

"Before" runs from a `git worktree` of the baseline revision (a temporary folder, removed afterwards) put first on
PYTHONPATH, so `import patchddm` imports the old package (every result records the `patchddm.__file__` it used);
"after" is this working tree. The two sides of every ratio run back to back, each point in a fresh subprocess
(`measure.py`; train: forward, ε-MSE loss, backward, AdamW step, batch 1; forward: one evaluation under no_grad).
Networks: `UNetConfig(in_ch=8, out_ch=1, num_res_blocks=2, groups=8)` with A: base 8, mults 1,3,4,4,4,4,4
(1,852,921 parameters), B: base 16, same mults (7,393,137), C: base 8, mults 1,2,2,4 (480,785); fp32, seed 0.

1. training step: A 64³, B 64³, C 96³ (median of 3 timed steps after a warm-up step);
2. network evaluation per member: A, B, C at 64³ and 128³, batch 1 and 5 (seconds / batch), and for the "after"
   code also with bf16 autocast where the CPU has native bf16;
3. `patchddm segment` (5 members × 2 DDIM steps) on phantom cases at 64³ and 128³ with the same checkpoint (net A,
   trained 2 steps by the CLI, then its near-zero convolutions re-initialised from seed 0 so masks are not trivial):
   seconds per case, wall time of the command, peak resident memory, and voxels differing between the masks.

Ratios against the authors' network use the issue's reference table (patchddm at the baseline / the authors',
measured by the issue's author): after / authors ≈ (after / before) × reference. Targets are reported, never
asserted.

    python benchmarks/speed.py --out benchmarks/results --overwrite [--baseline REV] [--threads 2]
"""
from __future__ import annotations

import contextlib, hashlib, json, math, os, re, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

from patchddm.core import PatchDDMError, atomic_path, pick_device

import measure as M
import report

NAME = "speed"
ROOT = M.ROOT
DEFAULT_BASELINE = "1ee0148"
DEFAULT_THREADS = 2
_NET = dict(in_ch=8, out_ch=1, num_res_blocks=2, groups=8)
CONFIGS = {"A": dict(_NET, base=8, mults=[1, 3, 4, 4, 4, 4, 4]),
           "B": dict(_NET, base=16, mults=[1, 3, 4, 4, 4, 4, 4]),
           "C": dict(_NET, base=8, mults=[1, 2, 2, 4])}
PARAMS = {"A": 1_852_921, "B": 7_393_137, "C": 480_785}
QUICK_CONFIG = "Q"                                          # --quick: a C-like tiny net (multiple 8)
CONFIGS_QUICK = {"Q": dict(in_ch=8, out_ch=1, num_res_blocks=1, groups=4, base=4, mults=[1, 2, 2, 4])}
TRAIN_ITEMS = (("A", 64), ("B", 64), ("C", 96))
FORWARD_SIZES, BATCHES = (64, 128), (1, 5)
# the issue's table: patchddm at the baseline / the authors' network (time, memory), measured by the issue's author
REFERENCE = {("train", "A", 64): (0.57, 0.80), ("train", "B", 64): (0.61, 0.87), ("train", "C", 96): (0.59, 0.93),
             ("forward", "A", 64): (0.97, 1.12), ("forward", "A", 128): (0.99, 1.23)}
TARGETS = dict(inference_time_per_member_5_members_vs_authors_max=0.5, inference_memory_one_member_vs_authors_max=1.0,
               train_time_vs_authors_max=0.5, train_memory_vs_authors_max=0.8,
               segment_time_per_case_after_over_before_64_max=0.5, segment_voxels_differing_max=0)
SEGMENT_STEPS, SEGMENT_ENSEMBLE = 2, 5
SEGMENT_ROUNDS = {64: 5}         # 64³ (the target): before and after alternate 5 times, medians compared
# segment fixture per volume edge: phantom resolution (mm), cache size and spacing, training patch
FIXTURES = {64: dict(resolution=4, size=64, spacing=None, patch=64, phantoms=5),
            128: dict(resolution=2, size=128, spacing=None, patch=64, phantoms=5),
            32: dict(resolution=4, size=32, spacing=8, patch=16, phantoms=2)}        # --quick
FIXTURE_STEPS, FIXTURE_LR, NEAR_ZERO = 2, 1e-5, 1e-3
MAX_SECONDS, MAX_BYTES = 600, 16 * 2**30     # a batch-5 evaluation estimated beyond these is skipped
FORWARD_BUDGET = 12                          # seconds of timing passes per evaluation point (measure's time_budget)
TAG = "SPEED_RESULT "

# Run inside the CLI's process: register the benchmark's network under a preset name (the CLI picks networks by
# preset), then hand the arguments to `patchddm.cli.main`.
TRAIN_DRIVER = """import json, sys
import patchddm.model as pm
pm.PRESETS[sys.argv[1]] = pm.UNetConfig(**json.loads(sys.argv[2]))
from patchddm.cli import main
sys.argv = ["patchddm", *sys.argv[3:]]
main()
"""
# `patchddm segment` as the CLI runs it; `patchddm.predict.segment`'s summary (seconds per case) is printed on the way
SEGMENT_DRIVER = """import json, resource, sys
tag = sys.argv[1]
import patchddm, patchddm.predict as P
_segment = P.segment
def segment(*a, **k):
    s = _segment(*a, **k)
    print(tag + json.dumps({k: s.get(k) for k in ("seconds", "seconds_per_case", "done", "failed", "nfe_per_case")},
                           default=str), flush=True)
    return s
P.segment = segment
from patchddm.cli import main
sys.argv = ["patchddm", *sys.argv[2:]]
try: main()
finally:
    print(tag + json.dumps(dict(patchddm_file=patchddm.__file__,
                                peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)), flush=True)
"""


# ------------------------------------------------------------------------------------------------------ source trees
def _git(*args: str, cwd: Path = ROOT) -> str:
    "git's output, trailing whitespace removed (leading whitespace is data: porcelain status lines start with a column)."
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=120).stdout.rstrip()


def tree_facts() -> dict:
    "The working tree measured as 'after': HEAD, modified files under patchddm/, a hash of patchddm/*.py."
    h = hashlib.sha256()
    for p in sorted((ROOT / "patchddm").glob("*.py")): h.update(p.name.encode() + b"\0" + p.read_bytes())
    out = dict(root=str(ROOT), patchddm_sha256=h.hexdigest()[:16])
    try:
        out["head"] = _git("rev-parse", "HEAD")
        out["modified"] = [l[3:] for l in _git("status", "--porcelain", "--", "patchddm").splitlines()]
    except (OSError, subprocess.SubprocessError) as err:
        out["git"] = f"unavailable ({type(err).__name__})"
    return out


@contextlib.contextmanager
def baseline_tree(rev: str | None):
    "Yield (path of a detached worktree of `rev` or None, facts); the worktree is removed afterwards."
    info = dict(rev=rev, status="not measured")
    if not rev:
        info["note"] = "no baseline revision given"; yield None, info; return
    try: commit = _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except (OSError, subprocess.SubprocessError) as err:
        info["note"] = f"git or revision {rev!r} unavailable ({type(err).__name__})"; yield None, info; return
    tmp = Path(tempfile.mkdtemp(prefix="patchddm-baseline-"))
    path = tmp / "tree"
    try:
        try: _git("worktree", "add", "--detach", "--quiet", str(path), commit)
        except (OSError, subprocess.SubprocessError) as err:
            why = getattr(err, "stderr", "") or type(err).__name__
            info["note"] = f"git worktree add failed: {str(why).strip().splitlines()[-1] if str(why).strip() else why}"
            yield None, info; return
        info.update(commit=commit, subject=_git("log", "-1", "--format=%s", commit), path=str(path), status="measured")
        yield path, info
    finally:
        if path.exists():
            try: _git("worktree", "remove", "--force", str(path))
            except (OSError, subprocess.SubprocessError): pass
        shutil.rmtree(tmp, ignore_errors=True)


def _check_tree(r: dict, root: Path, what: str) -> None:
    "The measurement imported patchddm from `root`, or a one-line error."
    f = Path(r.get("patchddm_file") or "?").resolve()
    if not f.is_relative_to(root.resolve()):
        raise PatchDDMError(what, f"imported patchddm from {f}, not from {root}")


# ------------------------------------------------------------------------------------------------------ measurements
def _side(r: dict, batch: int = 1) -> dict:
    "The numbers of one measurement worth keeping."
    return dict(seconds=round(r["seconds"], 4), cpu_seconds=round(r["cpu_seconds"], 4),
                seconds_per_member=round(r["seconds"] / batch, 4), peak_MiB=round(r["peak_bytes"] / report.MiB, 1),
                seconds_all=[round(s, 4) for s in r["seconds_all"]], warmup=r.get("warmup"), repeats=r.get("repeats"),
                params=r["params"], patchddm_file=r.get("patchddm_file"),
                **{k: r[k] for k in ("convolution_share", "op_shares") if k in r})


def _ratios(before: dict | None, after: dict | None, prefix: str = "") -> dict:
    "after / before of time (wall, CPU, per member) and peak memory."
    if not before or not after: return {f"{prefix}time_ratio": None, f"{prefix}memory_ratio": None}
    return {f"{prefix}time_ratio": report.ratio(after["seconds_per_member"], before["seconds_per_member"]),
            f"{prefix}cpu_time_ratio": report.ratio(after["cpu_seconds"], before["cpu_seconds"]),
            f"{prefix}memory_ratio": report.ratio(after["peak_MiB"], before["peak_MiB"])}


class Bench:
    "State shared by the parts of one run: source trees, device, threads, rows, notes."
    def __init__(self, base: Path | None, device: str, threads: int, quick: bool, repeats: int):
        self.base, self.device, self.threads, self.quick, self.repeats = base, device, threads, quick, repeats
        self.rows, self.notes, self.errors = [], [], []
        self.configs = CONFIGS_QUICK if quick else CONFIGS

    def sides(self) -> list[tuple[str, Path]]:
        return ([("before", self.base)] if self.base is not None else []) + [("after", ROOT)]

    def measure(self, side: str, root: Path, task: str, cfg: str, size: int, batch: int = 1, amp: str | None = None,
                budget: float | None = None, shares: bool = False) -> dict | None:
        "One measurement (None, with the error noted, if it failed); `shares`: also the profiler's operator shares."
        label = f"{task} {cfg} {size}³ batch {batch}{' ' + amp if amp else ''} ({side})"
        train = task == "train"
        spec = dict(task=task, model=dict(kind="ours", cfg=self.configs[cfg]), size=[size] * 3, batch=batch, amp=amp,
                    device=self.device, threads=self.threads if self.device == "cpu" else None, seed=0,
                    repeats=1 if self.quick else self.repeats, warmup=0 if self.quick else 1,
                    time_budget=None if (train or self.quick) else budget, root=str(root), label=label,
                    op_shares=shares)
        try:
            r = M.measure(spec, timeout=1800)
            _check_tree(r, root, label)
        except (M.MeasureError, PatchDDMError) as err:
            self.errors.append(str(err)); print(f"  error: {err}", flush=True); return None
        s = _side(r, batch)
        self.rows.append(dict(part=task, item=f"{cfg} {size}³" + ("" if train else f" batch {batch}"), config=cfg,
                              size=size, batch=batch, amp=amp or "fp32", side=side + (f" {amp}" if amp else ""),
                              params=s["params"], peak_MiB=s["peak_MiB"], seconds=s["seconds"],
                              seconds_per_member=s["seconds_per_member"], cpu_seconds=s["cpu_seconds"],
                              timed=len(r["seconds_all"]) - (r.get("warmup") or 0), method=r["method"],
                              patchddm_file=s["patchddm_file"]))
        print(f"  {label:44s} peak {s['peak_MiB']:8.1f} MiB, {s['seconds']:8.3f} s"
              + (f" ({s['seconds_per_member']:.3f} s/member)" if batch > 1 else ""), flush=True)
        return s


def _params_check(b: Bench, cfg: str, got: dict) -> dict:
    "Parameter counts measured on each side, and whether they are the expected ones."
    counts = {k: v["params"] for k, v in got.items() if v}
    want = PARAMS.get(cfg)
    ok = all(n == want for n in counts.values()) if want else None
    if want and not ok: b.notes.append(f"config {cfg}: parameter counts {counts} differ from the expected {want:,}")
    return dict(params=counts, params_expected=want, params_ok=ok)


def train_part(b: Bench, configs: list[str]) -> dict:
    "Training step of each item, before and after."
    items = ((QUICK_CONFIG, 16),) if b.quick else tuple(i for i in TRAIN_ITEMS if i[0] in configs)
    out = {}
    for cfg, size in items:
        got = {side: b.measure(side, root, "train", cfg, size) for side, root in b.sides()}
        res = dict(config=cfg, size=size, **got, **_ratios(got.get("before"), got.get("after")),
                   **_params_check(b, cfg, got))
        ref = REFERENCE.get(("train", cfg, size))
        if ref:
            res["reference_before_vs_authors"] = dict(time=ref[0], memory=ref[1])
            res["time_vs_authors"] = _scaled(res["time_ratio"], ref[0])
            res["memory_vs_authors"] = _scaled(res["memory_ratio"], ref[1])
            res["time_verdict"] = report.verdict(res["time_vs_authors"], TARGETS["train_time_vs_authors_max"], "lower")
            res["memory_verdict"] = report.verdict(res["memory_vs_authors"], TARGETS["train_memory_vs_authors_max"],
                                                   "lower")
        out[f"{cfg} {size}³"] = res
    return out


def _scaled(ratio: float | None, ref: float) -> float | None:
    return None if ratio is None else round(ratio * ref, 3)


def forward_part(b: Bench, configs: list[str], sizes: list[int], bf16: bool) -> dict:
    "Network evaluation per member, batch 1 and 5, before and after (+ after with bf16 autocast)."
    if b.quick: configs, sizes = [QUICK_CONFIG], [32]
    out = {}
    for cfg in configs:
        for size in sizes:
            one = {}
            for batch in BATCHES:
                key = f"{cfg} {size}³ batch {batch}"
                if batch > 1 and (why := _too_big(one, batch)):
                    out[key] = dict(config=cfg, size=size, batch=batch, status="skipped", note=why)
                    b.notes.append(f"forward {key}: skipped ({why})"); print(f"  forward {key}: skipped ({why})")
                    continue
                got = {side: b.measure(side, root, "forward", cfg, size, batch, budget=FORWARD_BUDGET,
                                       shares=side == "after") for side, root in b.sides()}
                with_bf16 = bf16 and not (b.quick and batch > 1)          # --quick: bf16 at batch 1 only
                if with_bf16: got["after_bf16"] = b.measure("after", ROOT, "forward", cfg, size, batch, "bf16",
                                                            FORWARD_BUDGET, shares=True)
                res = dict(config=cfg, size=size, batch=batch, **got, **_ratios(got.get("before"), got.get("after")),
                           **_params_check(b, cfg, {k: v for k, v in got.items() if k != "after_bf16"}))
                if with_bf16: res.update(_ratios(got.get("before"), got.get("after_bf16"), "bf16_"))
                if batch == 1: one = got
                out[key] = res
            ref = REFERENCE.get(("forward", cfg, size))
            if ref: out[f"{cfg} {size}³ vs authors"] = _vs_authors(out, cfg, size, ref)
    return out


def _too_big(one: dict, batch: int) -> str | None:
    "Why a batch-`batch` evaluation is not run, estimated from the batch-1 points (measured + 1 timed pass)."
    pts = [v for k, v in one.items() if v]
    if not pts: return None
    secs, mem = max(p["seconds"] for p in pts) * batch * 2, max(p["peak_MiB"] for p in pts) * batch * report.MiB
    if secs > MAX_SECONDS: return f"estimated {secs:.0f} s > {MAX_SECONDS} s from batch 1"
    if mem > MAX_BYTES: return f"estimated {mem / 2**30:.1f} GiB > {MAX_BYTES / 2**30:.0f} GiB from batch 1"
    return None


def _vs_authors(out: dict, cfg: str, size: int, ref: tuple[float, float]) -> dict:
    """after / authors ≈ (after / before at batch 1) × reference, with the authors' one-member-at-a-time time taken
    as before's batch-1 seconds / reference."""
    b1, b5 = out.get(f"{cfg} {size}³ batch 1", {}), out.get(f"{cfg} {size}³ batch {BATCHES[-1]}", {})
    before = b1.get("before")
    per = lambda side: (side or {}).get("seconds_per_member")
    res = dict(reference_before_vs_authors=dict(time=ref[0], memory=ref[1]))
    for tag, a1, a5 in (("", b1.get("after"), b5.get("after")), ("bf16_", b1.get("after_bf16"), b5.get("after_bf16"))):
        if tag and a1 is None and a5 is None: continue
        res[f"{tag}time_per_member_1_vs_authors"] = _scaled(report.ratio(per(a1), per(before)), ref[0])
        v5 = res[f"{tag}time_per_member_5_vs_authors"] = _scaled(report.ratio(per(a5), per(before)), ref[0])
        conv = (a5 or {}).get("convolution_share")            # what the convolutions alone of that evaluation cost
        res[f"{tag}convolutions_only_time_per_member_5_vs_authors"] = None if conv is None else _scaled(v5, conv)
        best = min((v for v in (per(a1), per(a5)) if v is not None), default=None)   # 5 members the faster way
        res[f"{tag}time_per_member_best_vs_authors"] = _scaled(report.ratio(best, per(before)), ref[0])
        res[f"{tag}best_batch"] = None if best is None else (1 if best == per(a1) else BATCHES[-1])
        res[f"{tag}memory_one_member_vs_authors"] = _scaled(
            report.ratio((a1 or {}).get("peak_MiB"), (before or {}).get("peak_MiB")), ref[1])
        res[f"{tag}time_verdict"] = report.verdict(res[f"{tag}time_per_member_5_vs_authors"],
                                                   TARGETS["inference_time_per_member_5_members_vs_authors_max"], "lower")
        res[f"{tag}best_time_verdict"] = report.verdict(res[f"{tag}time_per_member_best_vs_authors"],
                                                        TARGETS["inference_time_per_member_5_members_vs_authors_max"], "lower")
        res[f"{tag}memory_verdict"] = report.verdict(res[f"{tag}memory_one_member_vs_authors"],
                                                     TARGETS["inference_memory_one_member_vs_authors_max"], "lower")
    return res


# ----------------------------------------------------------------------------------------------------------- segment
def _env(root: Path, threads: int | None) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])]),
               COLUMNS="200", NO_COLOR="1", TERM="dumb")
    if threads: env["OMP_NUM_THREADS"] = str(threads)
    return env


def _cli(root: Path, args: list[str], threads: int | None, cwd: Path, driver: str | None = None,
         timeout: float = 1800) -> tuple[str, float]:
    "Run `patchddm ARGS` (or `driver` with ARGS) from source tree `root` → (stdout, wall seconds); a failure is one line."
    cmd = [sys.executable, *(["-c", driver] if driver else ["-m", "patchddm.cli"]), *args]
    t0 = time.perf_counter()
    try: r = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=_env(root, threads), timeout=timeout)
    except subprocess.TimeoutExpired: raise PatchDDMError(f"patchddm {args[0]}", f"did not finish within {timeout} s") from None
    if r.returncode:
        lines = [l for l in (r.stderr + r.stdout).splitlines() if l.strip()]
        why = next((l for l in reversed(lines) if l.startswith("error")), lines[-1] if lines else "no output")
        raise PatchDDMError(f"patchddm {args[0]} ({root})", why.strip()[:300])
    return r.stdout, time.perf_counter() - t0


def reinit_near_zero(ckpt: Path, seed: int = 0, tol: float = NEAR_ZERO) -> list[str]:
    """Re-initialise, in checkpoint `ckpt` (model and EMA weights), every Conv3d whose weight is near zero (max |w| <
    `tol`: the zero-initialised ones, moved only by a few small AdamW steps) as `Conv3d.reset_parameters` does —
    weight and bias uniform in ±1/√fan_in — from generator seed `seed`; save it back with all its keys → the layers."""
    import torch
    ck = torch.load(ckpt, map_location="cpu", weights_only=True)
    g, new, layers = torch.Generator().manual_seed(seed), {}, []
    for k, w in ck["model"].items():
        if k.endswith(".weight") and w.dim() == 5 and w.is_floating_point() and float(w.abs().max()) < tol:
            bound = 1 / math.sqrt(w[0].numel())
            new[k] = torch.empty(w.shape, dtype=w.dtype).uniform_(-bound, bound, generator=g)
            if (bias := k[:-len("weight")] + "bias") in ck["model"]:
                new[bias] = torch.empty(ck["model"][bias].shape).uniform_(-bound, bound, generator=g)
            layers.append(k[:-len(".weight")])
    for part in ("model", "ema"):
        if isinstance(ck.get(part), dict):
            for k, v in new.items():
                if k in ck[part]: ck[part][k] = v.clone().to(ck[part][k].dtype)
    with atomic_path(ckpt) as tmp: torch.save(ck, tmp)
    return layers


def make_fixture(tmp: Path, size: int, cfg_name: str, cfg: dict, root: Path, threads: int, device: str,
                 cases: int) -> dict:
    "Phantom cases, their cache, a 2-step training run of `cfg` (CLI, code of `root`) with re-initialised convs."
    f = FIXTURES[size]
    raw, prep, run = tmp / f"raw{size}", tmp / f"prep{size}", tmp / f"run{size}"
    _cli(root, ["phantoms", str(raw), "--n", str(f["phantoms"]), "--resolution", str(f["resolution"]), "--seed", "0"],
         threads, tmp)
    _cli(root, ["preprocess", str(raw), str(prep), "--size", str(f["size"]), "--seed", "0",
                *(["--spacing", str(f["spacing"])] if f["spacing"] else [])], threads, tmp)
    preset = f"speed-{cfg_name.lower()}"
    _, secs = _cli(root, [preset, json.dumps(cfg), "train", str(prep), str(run), "--preset", preset, "--patch",
                          str(f["patch"]), "--steps", str(FIXTURE_STEPS), "--lr", str(FIXTURE_LR), "--val-every", "0",
                          "--ckpt-every", str(FIXTURE_STEPS), "--log-every", "1", "--seed", "0", "--amp", "none",
                          "--devices", device], threads, tmp, driver=TRAIN_DRIVER)
    layers = reinit_near_zero(run / "last.pt")
    inp = tmp / f"input{size}"
    picked = sorted(p for p in raw.iterdir() if p.is_dir())[-cases:]
    for p in picked: shutil.copytree(p, inp / p.name)
    return dict(volume=size, phantom_resolution_mm=f["resolution"], cache_size=f["size"], cache_spacing=f["spacing"],
                phantoms=f["phantoms"], cases=[p.name for p in picked], network=cfg_name, train_patch=f["patch"],
                train_steps=FIXTURE_STEPS, train_lr=FIXTURE_LR, train_seconds=round(secs, 1), trained_with=str(root),
                reinitialised_layers=layers, checkpoint=run / "last.pt", input=inp)


def _has_batch_option(threads: int, tmp: Path) -> bool:
    "Whether this tree's `patchddm segment` has a --batch option."
    out, _ = _cli(ROOT, ["segment", "--help"], threads, tmp)
    return re.search(r"--batch\b", out) is not None


def run_segment(root: Path, fx: dict, out: Path, threads: int, device: str, extra: list[str]) -> dict:
    "One `segment` run over the fixture's cases → seconds per case, wall seconds, peak RSS."
    args = [TAG, "segment", str(fx["checkpoint"]), str(fx["input"]), str(out), "--steps", str(SEGMENT_STEPS),
            "--ensemble", str(SEGMENT_ENSEMBLE), "--seed", "0", "--solver", "ddim", "--device", device, *extra]
    stdout, wall = _cli(root, args, threads, out.parent, driver=SEGMENT_DRIVER)
    got = {}
    for line in stdout.splitlines():
        if line.startswith(TAG): got.update(json.loads(line[len(TAG):]))
    _check_tree(got, root, "segment")
    n = len(got.get("done") or []) or len(fx["cases"])
    spc = got.get("seconds_per_case")
    return dict(seconds_per_case=round(spc, 3) if spc is not None else round(wall / n, 3),
                seconds_per_case_source="segment summary (sampling)" if spc is not None else "wall / cases",
                wall_seconds=round(wall, 2), peak_rss_MiB=round(got.get("peak_rss_bytes", 0) / report.MiB, 1),
                cases=n, patchddm_file=got.get("patchddm_file"), options=" ".join(args[5:]))


def _masks(a: Path, b: Path, cases: list[str]) -> dict:
    "Voxels differing and Dice between the mask.nii.gz of two prediction folders, per case."
    import nibabel as nib
    import numpy as np
    per = {}
    for c in cases:
        x = np.asarray(nib.load(a / c / "mask.nii.gz").dataobj) > 0
        y = np.asarray(nib.load(b / c / "mask.nii.gz").dataobj) > 0
        s = int(x.sum()) + int(y.sum())
        per[c] = dict(voxels_differing=int((x != y).sum()), dice=1.0 if s == 0 else round(2 * int((x & y).sum()) / s, 5),
                      voxels_reference=int(x.sum()), voxels=int(y.sum()), voxels_total=int(x.size))
    return dict(cases=per, voxels_differing=sum(p["voxels_differing"] for p in per.values()),
                identical=all(p["voxels_differing"] == 0 for p in per.values()),
                dice_min=min(p["dice"] for p in per.values()) if per else None)


def _opt(extra: list[str], name: str, kind=str):
    "The value of option `name` in a command line's extra arguments, or None."
    return kind(extra[extra.index(name) + 1]) if name in extra else None


def segment_part(b: Bench, sizes: list[int], cases: int, bf16: bool) -> tuple[dict, dict]:
    "`segment` per volume size: before, after (default, and --batch 1 / 5 where the option exists) → results, setup."
    if b.quick: sizes, cases = [32], 1
    fx_root = b.base or ROOT
    cfg_name = QUICK_CONFIG if b.quick else "A"
    res, setup = {}, {}
    with tempfile.TemporaryDirectory(prefix="patchddm-speed-") as t:
        tmp = Path(t)
        batch_opt = None                                                 # --quick: not checked, default only
        if not b.quick:
            try: batch_opt = _has_batch_option(b.threads, tmp)
            except PatchDDMError as err:
                b.errors.append(str(err)); batch_opt = False
        setup["after_segment_has_batch_option"] = batch_opt
        variants = [(side, root, []) for side, root in b.sides()]
        if batch_opt: variants += [(f"after --batch {n}", ROOT, ["--batch", str(n)]) for n in BATCHES]
        if batch_opt and bf16:                                           # bf16 autocast: faster, masks may move
            variants += [(f"after --amp bf16 --batch {n}", ROOT, ["--amp", "bf16", "--batch", str(n)]) for n in BATCHES]
        for size in sizes:
            try: fx = make_fixture(tmp, size, cfg_name, b.configs[cfg_name], fx_root, b.threads, b.device, cases)
            except PatchDDMError as err:
                b.errors.append(str(err)); print(f"  error: {err}"); res[f"{size}³"] = dict(status="failed", error=str(err))
                continue
            setup[f"{size}³"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in fx.items()
                                 if k not in ("checkpoint", "input")}
            item, outs = dict(volume=size, cases=fx["cases"]), {}
            rounds = 1 if b.quick else SEGMENT_ROUNDS.get(size, 1)
            for rnd in range(rounds):                                    # sides alternate, round after round
                for side, root, extra in variants:
                    if rnd and item.get(side) is None: continue          # failed in round 1
                    o = tmp / f"seg{size}-{re.sub(r'[^a-z0-9]+', '-', side)}" / f"round{rnd}"
                    o.parent.mkdir(parents=True, exist_ok=True)
                    try: r = run_segment(root, fx, o, b.threads, b.device, extra)
                    except PatchDDMError as err:
                        b.errors.append(str(err)); print(f"  error: {err}")
                        if rnd == 0: item[side] = None
                        continue
                    print(f"  segment {size}³ {side:18s} {r['seconds_per_case']:8.2f} s/case, wall {r['wall_seconds']:7.1f} s, "
                          f"peak RSS {r['peak_rss_MiB']:7.1f} MiB" + (f" (round {rnd + 1} of {rounds})" if rounds > 1 else ""),
                          flush=True)
                    if rnd == 0:                                         # masks: round 1's folder
                        item[side], outs[side] = dict(r, seconds_per_case_rounds=[], wall_seconds_rounds=[]), o
                    else: shutil.rmtree(o, ignore_errors=True)
                    acc = item[side]
                    acc["seconds_per_case_rounds"].append(r["seconds_per_case"])
                    acc["wall_seconds_rounds"].append(r["wall_seconds"])
                    acc["peak_rss_MiB"] = max(acc["peak_rss_MiB"], r["peak_rss_MiB"])
            for side, root, extra in variants:
                r = item.get(side)
                if r is None: continue
                r["seconds_per_case"] = statistics.median(r["seconds_per_case_rounds"])
                r["wall_seconds"] = statistics.median(r["wall_seconds_rounds"])
                b.rows.append(dict(part="segment", item=f"segment {size}³", config=cfg_name, size=size,
                                   batch=_opt(extra, "--batch", int), amp=_opt(extra, "--amp") or "fp32", side=side,
                                   params=PARAMS.get(cfg_name),
                                   peak_MiB=r["peak_rss_MiB"], seconds=r["seconds_per_case"], seconds_per_member=
                                   round(r["seconds_per_case"] / SEGMENT_ENSEMBLE, 4), cpu_seconds=None, timed=r["cases"],
                                   wall_seconds=r["wall_seconds"], method="ru_maxrss of the segment process",
                                   patchddm_file=r["patchddm_file"]))
            ref = "before" if "before" in outs else "after"
            for side in outs:
                if side == ref: continue
                sp = lambda s: (item.get(s) or {}).get("seconds_per_case")
                item[f"{side} / {ref}"] = dict(
                    time_ratio=report.ratio(sp(side), sp(ref)),
                    time_ratio_rounds=[report.ratio(a, c) for a, c in zip(item[side]["seconds_per_case_rounds"],
                                                                           item[ref]["seconds_per_case_rounds"])],
                    wall_ratio=report.ratio(item[side]["wall_seconds"], item[ref]["wall_seconds"]),
                    memory_ratio=report.ratio(item[side]["peak_rss_MiB"], item[ref]["peak_rss_MiB"]),
                    masks=_masks(outs[ref], outs[side], fx["cases"]))
            if ref == "before" and "after / before" in item:
                c = item["after / before"]
                item["time_verdict"] = (report.verdict(c["time_ratio"], TARGETS["segment_time_per_case_after_over_before_64_max"],
                                                       "lower") if size == 64 else "")
                item["masks_verdict"] = "meets" if c["masks"]["identical"] else "misses"
            res[f"{size}³"] = item
    return res, setup


# --------------------------------------------------------------------------------------------------------- headline
def headline(results: dict) -> list[dict]:
    "Rows (quantity, value, target, verdict) for run_all's summary."
    rows = []
    add = lambda q, v, t="", verdict="": rows.append(dict(quantity=q, value="n/a" if v is None else v, target=t,
                                                          verdict=verdict))
    for key, r in results.get("train", {}).items():
        add(f"train {key}: time after / before", r.get("time_ratio"))
        add(f"train {key}: memory after / before", r.get("memory_ratio"))
        if "time_vs_authors" in r:
            add(f"train {key}: time after / authors (issue ref. {r['reference_before_vs_authors']['time']})",
                r["time_vs_authors"], "≤ 0.5", r["time_verdict"])
            add(f"train {key}: memory after / authors (issue ref. {r['reference_before_vs_authors']['memory']})",
                r["memory_vs_authors"], "≤ 0.8", r["memory_verdict"])
    fw = results.get("forward", {})
    for key, r in fw.items():
        if key.endswith("vs authors"):
            k = key[:-len(" vs authors")]
            for tag, label in (("", ""), ("bf16_", " (after bf16)")):
                if f"{tag}time_verdict" not in r: continue
                add(f"inference {k}{label}: time per member, 5 members as one batch, after / authors",
                    r[f"{tag}time_per_member_5_vs_authors"], "≤ 0.5", r[f"{tag}time_verdict"])
                if r.get(f"{tag}convolutions_only_time_per_member_5_vs_authors") is not None:
                    add(f"inference {k}{label}: of that, the convolutions alone (profiler share), after / authors",
                        r[f"{tag}convolutions_only_time_per_member_5_vs_authors"])
                if f"{tag}time_per_member_best_vs_authors" in r:
                    add(f"inference {k}{label}: time per member, 5 members in the faster way (batch "
                        f"{r[f'{tag}best_batch']}), after / authors", r[f"{tag}time_per_member_best_vs_authors"], "≤ 0.5",
                        r[f"{tag}best_time_verdict"])
                add(f"inference {k}{label}: memory one member after / authors", r[f"{tag}memory_one_member_vs_authors"],
                    "≤ 1.0", r[f"{tag}memory_verdict"])
        elif r.get("status") != "skipped" and r.get("config") in ("A", QUICK_CONFIG):
            add(f"inference {key}: time per member after / before", r.get("time_ratio"))
            add(f"inference {key}: memory after / before", r.get("memory_ratio"))
    for key, r in results.get("segment", {}).items():
        for name, c in r.items():
            if not name.endswith(" / before") and not name.endswith(" / after"): continue
            t = "≤ 0.5" if key == "64³" and name == "after / before" else ""
            add(f"segment {key} ({SEGMENT_ENSEMBLE}×{SEGMENT_STEPS} DDIM): s/case {name}", c["time_ratio"], t,
                r.get("time_verdict", "") if t else "")
            add(f"segment {key}: mask voxels differing {name}", c["masks"]["voxels_differing"],
                "0" if name == "after / before" else "", r.get("masks_verdict", "") if name == "after / before" else "")
    return rows


# --------------------------------------------------------------------------------------------------------------- run
def run(out: Path, quick: bool = False, overwrite: bool = False, device: str = "auto", threads: int | None = None,
        baseline: str | None = DEFAULT_BASELINE, parts: list[str] | None = None, configs: list[str] | None = None,
        sizes: list[int] | None = None, repeats: int | None = None, cases: int | None = None) -> dict:
    "Measure before vs after and write the results; return the JSON dict."
    report.check_outputs(out, NAME, overwrite)
    device = str(pick_device(device))
    threads = threads or (1 if quick else DEFAULT_THREADS)      # --quick runs beside other benchmarks: 1 thread
    parts = parts or ["train", "forward", "segment"]
    configs, sizes = configs or list(CONFIGS), sizes or list(FORWARD_SIZES)
    bad = [s for s in sizes if s not in FORWARD_SIZES]
    if bad: raise PatchDDMError(f"sizes {bad}", f"choose from {list(FORWARD_SIZES)}")
    machine, t0 = report.machine_info(device), time.time()
    import torch
    bf16 = bool(torch.cuda.is_bf16_supported()) if device.startswith("cuda") else \
        bool(torch.backends.mkldnn.is_available() and machine["cpu_bf16"])
    results, setup = {}, dict(quick=quick, device=device, threads=threads, dtype="float32", seed=0,
                              configs=CONFIGS_QUICK if quick else {k: CONFIGS[k] for k in configs},
                              params_expected=PARAMS, after=tree_facts(), bf16_rows=bf16, parts=parts,
                              train_repeats=1 if quick else (repeats or 3), forward_time_budget_s=FORWARD_BUDGET,
                              segment=dict(steps=SEGMENT_STEPS, ensemble=SEGMENT_ENSEMBLE, solver="ddim", seed=0))
    with baseline_tree(baseline) as (base, binfo):
        setup["baseline"] = binfo
        print(f"before: {binfo.get('commit', binfo.get('note'))}; after: {ROOT} ({len(setup['after'].get('modified', []))} "
              f"modified files under patchddm/); {threads} threads", flush=True)
        b, secs = Bench(base, device, threads, quick, repeats or 3), {}
        for part in ("train", "forward", "segment"):
            if part not in parts: continue
            t1 = time.time()
            if part == "train": results["train"] = train_part(b, configs)
            elif part == "forward": results["forward"] = forward_part(b, configs, sizes, bf16)
            else: results["segment"], setup["segment_fixture"] = segment_part(b, sizes, cases or 2, bf16)
            secs[part] = round(time.time() - t1, 1)
            print(f"  {part}: {secs[part]:.0f} s", flush=True)
        setup["seconds_per_part"] = secs
    results["baseline"] = binfo["status"]
    results["headline"] = headline(results)
    results["errors"] = b.errors
    setup["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    notes = list(b.notes)
    if binfo["status"] != "measured":
        notes.append(f"baseline not measured: {binfo.get('note')}; only the 'after' side is reported, ratios are n/a")
    notes += [
        "after / authors = (after / before) × the issue's reference ratio (patchddm at the baseline / the authors' "
        "network), which the issue's author measured, not this benchmark; inference references are for network A "
        "(64³: time 0.97, memory 1.12; 128³: 0.99, 1.23), training ones for A 64³ (0.57, 0.80), B 64³ (0.61, 0.87) "
        "and C 96³ (0.59, 0.93).",
        "inference 'time per member, 5 members' is after's batch-5 seconds / 5 against before's batch-1 seconds (the "
        "baseline evaluates members one at a time); 'memory one member' is after's batch-1 peak against before's.",
        BEST_NOTE,
        "time ratios use wall-clock seconds (cpu_time_ratio: CPU seconds of the measuring process); the machine is "
        "shared, so each pair ran back to back; seconds per member = seconds / batch.",
        f"forward points: one warm-up and 3 timed passes unless the measured call shows they would exceed "
        f"{FORWARD_BUDGET} s; then the measured call is the warm-up and fewer passes are timed (column 'timed').",
        f"segment fixture: phantoms, cache and a {FIXTURE_STEPS}-step training run of network "
        f"{'Q (tiny)' if quick else 'A'} made by the CLI of the "
        f"{'baseline' if binfo['status'] == 'measured' else 'current'} tree (the network is registered as a preset in "
        "the CLI's process, since the CLI picks networks by preset name); then every Conv3d of the checkpoint's model "
        f"(and EMA) with max |w| < {NEAR_ZERO} — the zero-initialised ones, moved only by the AdamW steps — was "
        "re-initialised like Conv3d.reset_parameters (uniform ±1/√fan_in, weight and bias) from seed 0 and saved "
        "back with all keys, so the masks are not trivial. The masks are those of an untrained network: only their "
        "identity before vs after means something, not their quality.",
        "segment runs `patchddm.cli` in a driver process that prints `patchddm.predict.segment`'s summary: seconds per "
        "case is its sampling time per case; wall_seconds is the whole command (imports, loading, NIfTI I/O); "
        "peak_MiB of segment rows is the peak resident set of that process (ru_maxrss, the largest of its rounds), not "
        "measure.py's peak above baseline.",
        "segment rounds: at " + ", ".join(f"{k}³" for k in SEGMENT_ROUNDS) + " every variant runs "
        + "/".join(str(v) for v in SEGMENT_ROUNDS.values()) + " times, the variants alternating round after round (the "
        "machine's speed drifts by ±20 % within minutes); seconds per case is the median of the rounds "
        "(seconds_per_case_rounds, and time_ratio_rounds: after / before round by round); masks are compared on round 1.",
    ]
    if quick:
        notes.append("quick smoke run: a tiny network Q at 16³/32³, one timed pass, segment on one 32³ case; the "
                     "numbers mean nothing")
    if b.errors: notes.append(f"{len(b.errors)} measurement(s) failed: see results.errors")
    return report.write_result(out, NAME, __doc__.split("\n\n")[0].replace("\n", " "), machine, setup, results,
                               b.rows, lambda df: _plot(results), targets=TARGETS, seconds_total=time.time() - t0,
                               notes=notes)


BEST_NOTE = ("inference '5 members in the faster way' is the smaller of after's batch-1 and batch-5 seconds per member: "
             "what `segment --batch auto` gets where it picks that batch (on the CPU it samples one member at a time)")


def reanalyze(out: Path) -> dict:
    "Recompute the derived figures (vs authors, headline) of an existing OUT/speed.json from its measurements and rewrite it."
    doc = json.loads((out / f"{NAME}.json").read_text())
    res = doc["results"]
    for key in [k for k in res.get("forward", {}) if k.endswith(" vs authors")]:
        cfg, size = key.split()[0], int(key.split()[1].rstrip("³"))
        res["forward"][key] = _vs_authors(res["forward"], cfg, size, REFERENCE[("forward", cfg, size)])
    res["headline"] = headline(res)
    notes = doc.get("notes", []) + ([BEST_NOTE] if BEST_NOTE not in doc.get("notes", []) else [])
    return report.write_result(out, NAME, doc["description"], doc["machine"], doc["setup"], res, doc["rows"],
                               lambda df: _plot(res), targets=doc.get("targets", TARGETS),
                               seconds_total=doc.get("seconds_total"), notes=notes)


def _plot(results: dict):
    "after / before time and memory ratios of every item."
    sns = report.style()
    import matplotlib.pyplot as plt
    import pandas as pd
    recs = []
    for part in ("train", "forward"):
        for key, r in results.get(part, {}).items():
            for tag, label in (("", "after / before"), ("bf16_", "after bf16 / before fp32")):
                if r.get(f"{tag}time_ratio") is None: continue
                recs.append(dict(item=f"{part} {key}", what=label, time=r[f"{tag}time_ratio"],
                                 memory=r[f"{tag}memory_ratio"]))
    for key, r in results.get("segment", {}).items():
        for name, c in r.items():
            if isinstance(c, dict) and "masks" in c:
                recs.append(dict(item=f"segment {key}", what=name, time=c["time_ratio"], memory=c["memory_ratio"]))
    df = pd.DataFrame(recs)
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 0.9 + 0.28 * max(1, df["item"].nunique() if len(df) else 1)),
                             sharey=True)
    if not len(df):
        for ax in axes: ax.text(0.5, 0.5, "no before / after pairs (baseline not measured)", ha="center")
        return fig
    for ax, col in zip(axes, ("time", "memory")):
        sns.barplot(df, y="item", x=col, hue="what", ax=ax, palette="deep", orient="h")
        ax.axvline(1.0, color="0.3", lw=0.8)
        ax.set(xlabel=f"{col}: after / before", ylabel="")
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle("issue 17: working tree vs baseline (lower is better; fp32 unless noted)", fontsize=9)
    report.shared_legend(fig, axes)
    return fig


def main(argv: list[str] | None = None) -> int:
    ap = report.base_parser(__doc__, "smoke run: a tiny network at 16³/32³, one timed pass, segment on one 32³ case")
    ap.add_argument("--threads", type=int, help=f"torch threads per measurement (default {DEFAULT_THREADS}; --quick: 1)")
    ap.add_argument("--baseline", default=DEFAULT_BASELINE,
                    help=f"git revision measured as 'before' (default {DEFAULT_BASELINE}); 'none': after only")
    ap.add_argument("--parts", nargs="+", choices=["train", "forward", "segment"], help="measure only these parts")
    ap.add_argument("--configs", nargs="+", choices=list(CONFIGS), help="networks for train and forward (default A B C)")
    ap.add_argument("--sizes", type=int, nargs="+", help="volume edges for forward and segment (default 64 128)")
    ap.add_argument("--repeats", type=int, help="timed passes per point (default 3)")
    ap.add_argument("--cases", type=int, help="segment cases per size (default 2)")
    ap.add_argument("--reanalyze", action="store_true", help="recompute the derived figures of OUT/speed.json, no measuring")
    a = ap.parse_args(argv)
    if a.reanalyze:
        reanalyze(a.out); return 0
    try:
        run(a.out, a.quick, a.overwrite, a.device, a.threads, None if a.baseline == "none" else a.baseline, a.parts,
            a.configs, a.sizes, a.repeats, a.cases)
    except PatchDDMError as err:
        print(f"error: {err}", file=sys.stderr); return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

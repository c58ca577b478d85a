"""Inference: whole-volume vs sliding-window sampling. Peak memory and time of one network evaluation and of a short
DDIM run on an S³ volume, whole or in overlapping W³ windows (`patchddm.predict.make_eps_fn(window=W)`), and how
far the windowed result is from the whole-volume one.

Without a trained run (`--run`), the network is the small preset from seed 0 with its zero-initialised output
convolutions re-initialised (otherwise its ε is identically 0 and any comparison is trivial) on a random image from
seed 0: the agreement is stated as the largest ε difference and whether the sampled masks are equal, and Dice
against the truth is "n/a". With a trained run, the volume is the first test case of the run's cache, the window
the run's training patch, and Dice (windowed vs whole, and each against the truth) is measured on `--cases` test
cases (`patchddm.predict.segment_volume`, ensemble 1, seed 0). Target (never asserted): windowed memory
≤ 0.25× whole-volume.

    python benchmarks/inference.py --out benchmarks/results [--run RUN_DIR]
"""
from __future__ import annotations

import importlib.util, sys, tempfile, time
from pathlib import Path

import numpy as np

from patchddm.core import PatchDDMError, pick_device
from patchddm.model import preset_config

import measure as M
import report

NAME = "inference"
TARGET_MEMORY_RATIO = 0.25


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    "Binary Dice of two boolean arrays; both empty → 1."
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int(np.logical_and(a, b).sum()) / s


def run(out: Path, quick: bool = False, overwrite: bool = False, device: str = "auto", run_dir: Path | None = None,
        size: int | None = None, window: int | None = None, steps: int | None = None, cases: int = 3,
        overlap: float = 0.5, threads: int | None = 1, prep_dir: Path | None = None) -> dict:
    "Measure whole vs windowed inference and write the results; return the JSON dict."
    report.check_outputs(out, NAME, overwrite)
    device = str(pick_device(device))
    machine, t0 = report.machine_info(device), time.time()
    desc = __doc__.split("\n\n")[0].replace("\n", " ")
    if importlib.util.find_spec("patchddm.evaluate") is None:
        return report.write_result(out, NAME, desc, machine, dict(quick=quick), dict(status="not measured"), [], None,
                                   notes=["patchddm.evaluate (sliding-window sampling) is not available yet"])
    steps = steps or (2 if quick else 5)
    whats = ("ddim",) if quick else ("eval", "ddim")
    if run_dir is not None:
        from patchddm.data import PreparedDataset
        from patchddm.modes import load_run
        r = load_run(M.checkpoint_of(run_dir), device="cpu")
        prep = Path(prep_dir or r.config["prep_dir"])
        if not (prep / "prep.json").is_file(): raise PatchDDMError(prep, "preprocessed cache not found (pass --prep)")
        ds = PreparedDataset(prep)
        test = ds.split("test") or ds.case_ids
        size = ds.size
        window = window or r.config["patch"] or size // 2
        model = dict(kind="run", path=str(run_dir))
        about = dict(run=str(run_dir), checkpoint=str(r.path), step=r.step, mode=r.mode, prep=str(prep),
                     case=test[0], model=r.model.cfg.to_dict())
    else:
        cfg = preset_config("small")
        size = size or (32 if quick else 64)
        window = window or size // 2
        model = dict(kind="ours", cfg=cfg.to_dict())
        about = dict(run=None, model=cfg.to_dict(), image="uniform random in [-1, 1] + coordinate channels, seed 0")
    mult = 2 ** (len(about["model"]["mults"]) - 1)                 # the network's size multiple
    for what_, v in (("volume", size), ("window", window)):
        if v < 1 or v % mult: raise PatchDDMError(f"{what_} {v}", f"must be a positive multiple of {mult} (the network's)")
    rows, saved = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for what in whats:
            for win in (None, window):
                label = "whole volume" if win is None else f"{win}³ windows"
                save = str(Path(tmp) / f"{what}-{win}.npy")
                args = dict(name="inference", model=model, size=size, window=win, overlap=overlap, what=what,
                            steps=steps, save=save)
                if run_dir is not None: args.update(prep=about["prep"], case=about["case"])
                spec = dict(task="call", args=args, device=device, seed=0, repeats=1, warmup=0,
                            threads=threads if device == "cpu" else None, label=f"{what} {label}")
                try:
                    res = M.measure(spec)
                except M.MeasureError as err:
                    raise PatchDDMError(NAME, str(err)) from None
                saved[what, win] = np.load(save)
                rows.append(dict(call="one network evaluation" if what == "eval" else f"DDIM {steps} steps",
                                 what=what, mode=label, volume=size, window=win, overlap=overlap,
                                 peak_MiB=round(res["peak_bytes"] / report.MiB, 1), seconds=round(res["seconds"], 4),
                                 cpu_seconds=round(res["cpu_seconds"], 4),
                                 seconds_first=round(res["seconds_first"], 4), method=res["method"]))
                print(f"  {rows[-1]['call']:24s} {label:14s}: peak {rows[-1]['peak_MiB']:8.1f} MiB, "
                      f"{rows[-1]['seconds']:.3f} s", flush=True)
    results = {}
    for what in whats:
        w, s = [r for r in rows if r["what"] == what and r["window"] is not None][0], \
               [r for r in rows if r["what"] == what and r["window"] is None][0]
        res = dict(memory_ratio=report.ratio(w["peak_MiB"], s["peak_MiB"]),
                   time_ratio=report.ratio(w["seconds"], s["seconds"]),
                   cpu_time_ratio=report.ratio(w["cpu_seconds"], s["cpu_seconds"]))
        res["memory_verdict"] = report.verdict(res["memory_ratio"], TARGET_MEMORY_RATIO, "lower")
        a, b = saved[what, None], saved[what, window]
        if what == "eval":
            res["max_abs_eps_difference"] = float(np.abs(a - b).max())
            res["mean_abs_eps_whole"] = float(np.abs(a).mean())
            res["eps_equal"] = bool(np.array_equal(a, b))
        else:
            res["masks_equal"] = bool(np.array_equal(a, b))
            res["voxels_differing"] = int((a != b).sum())
            res["dice_window_vs_whole_same_volume"] = round(_dice(a, b), 4)
        results[what] = res
    results["dice"] = (_dice_study(run_dir, about["prep"], window, steps, cases, overlap, device)
                       if run_dir is not None else "n/a")
    setup = dict(about, volume=size, window=window, overlap=overlap, ddim_steps=steps, device=device, threads=threads,
                 seed=0, quick=quick, blend="gaussian (patchddm.evaluate default)")
    notes = [] if run_dir is not None else [
        "untrained network: Dice against a truth is n/a; agreement is stated as ε difference and mask equality"]
    return report.write_result(out, NAME, desc, machine, setup, results, rows, _plot,
                               targets=dict(memory_ratio_max=TARGET_MEMORY_RATIO), seconds_total=time.time() - t0,
                               notes=notes)


def _dice_study(run_dir: Path, prep: str, window: int, steps: int, cases: int, overlap: float, device: str) -> dict:
    "Dice of whole-volume and windowed DDIM segmentations (ensemble 1, seed 0) with each other and with the truth."
    from patchddm.data import PreparedDataset
    from patchddm.predict import segment_volume
    from patchddm.modes import load_run
    r = load_run(M.checkpoint_of(run_dir), device=device)
    ds = PreparedDataset(prep)
    ids = (ds.split("test") or ds.case_ids)[:cases]
    per = []
    for cid in ids:
        image, mask, _ = ds.load(cid)
        truth = np.asarray(mask) > 0
        whole = segment_volume(r, image, steps=steps, ensemble=1, seed=0).mask
        win = segment_volume(r, image, steps=steps, ensemble=1, seed=0, window=window, overlap=overlap).mask
        per.append(dict(case_id=cid, whole_vs_window=_dice(whole, win), whole_vs_truth=_dice(whole, truth),
                        window_vs_truth=_dice(win, truth)))
    mean = {k: round(float(np.mean([p[k] for p in per])), 4) for k in ("whole_vs_window", "whole_vs_truth",
                                                                         "window_vs_truth")}
    return dict(mean, cases=per, steps=steps, seed=0)


def _plot(df):
    "Peak memory and seconds, whole vs windowed, per call."
    sns = report.style()
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(7.5, 3.0))
    for ax, col, title in ((axes[0], "peak_MiB", "peak memory above baseline (MiB)"), (axes[1], "seconds", "seconds")):
        sns.barplot(df, x="call", y=col, hue="mode", ax=ax, palette="deep")
        ax.set(xlabel="", ylabel="", title=title)
        for c in ax.containers: ax.bar_label(c, fmt="%.3g", fontsize=7)
    fig.suptitle(f"sampling a {int(df.volume.iloc[0])}³ volume: whole vs overlapping windows (seed 0)", fontsize=9)
    report.shared_legend(fig, axes)
    return fig


def main(argv: list[str] | None = None) -> int:
    ap = report.base_parser(__doc__, "smoke run: 32³ volume, 16³ windows, DDIM 2 steps only")
    ap.add_argument("--run", type=Path, help="a trained run folder (default: an untrained small network)")
    ap.add_argument("--prep", type=Path, help="the run's preprocessed cache (default: the one it was trained on)")
    ap.add_argument("--size", type=int, help="volume edge without --run (default 64)")
    ap.add_argument("--window", type=int, help="window edge (default: the run's patch, or size/2)")
    ap.add_argument("--steps", type=int, help="DDIM steps (default 5)")
    ap.add_argument("--cases", type=int, default=3, help="test cases for the Dice study (with --run)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    try:
        run(a.out, a.quick, a.overwrite, a.device, a.run, a.size, a.window, a.steps, a.cases, threads=a.threads, prep_dir=a.prep)
    except PatchDDMError as err:
        print(f"error: {err}", file=sys.stderr); return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Quality per compute: Dice against the number of network evaluations (NFE) for DDIM and the second-order solvers
(DPM-Solver++(2M), Heun) on a trained run's test cases.

Each point is `patchddm.evaluate.sampling_study` with one ensemble member (seed 0) per case: the mean Dice (and
HD95) over `--cases` test cases of the run's cache, at the solver's NFE (`patchddm.diffusion.nfe`: Heun spends
2·steps − 2, the others `steps`). Needs a trained run (`--run RUN_DIR`); without one the JSON records that nothing
was measured.

    python benchmarks/quality.py --out benchmarks/results --run RUN_DIR
"""
from __future__ import annotations

import importlib.util, sys, time
from pathlib import Path

from patchddm.core import PatchDDMError, pick_device

import measure as M
import report

NAME = "quality"
STEPS = {"ddim": [2, 4, 10], "dpm++2m": [2, 4, 10], "heun": [2, 3, 6]}
QUICK_STEPS = {"ddim": [2], "dpm++2m": [2], "heun": [2]}


def run(out: Path, quick: bool = False, overwrite: bool = False, device: str = "auto", run_dir: Path | None = None,
        cases: int = 3, seed: int = 0, steps: dict | None = None, prep_dir: Path | None = None) -> dict:
    "Dice vs NFE per solver on `run_dir`'s test cases; write the results and return the JSON dict."
    report.check_outputs(out, NAME, overwrite)
    device = str(pick_device(device))
    machine, t0 = report.machine_info(device), time.time()
    desc = __doc__.split("\n\n")[0].replace("\n", " ")
    why = ("no trained run given (pass --run RUN_DIR)" if run_dir is None else
           "patchddm.evaluate is not available yet" if importlib.util.find_spec("patchddm.evaluate") is None else None)
    if why:
        return report.write_result(out, NAME, desc, machine, dict(quick=quick, run=None if run_dir is None else str(run_dir)),
                                   dict(status="not measured"), [], None, notes=[why])
    from patchddm.data import PreparedDataset
    from patchddm.diffusion import nfe
    from patchddm.evaluate import sampling_study
    from patchddm.modes import load_run
    ckpt = M.checkpoint_of(run_dir)
    r = load_run(ckpt, device=device)
    prep = Path(prep_dir or r.config["prep_dir"])
    if not (prep / "prep.json").is_file(): raise PatchDDMError(prep, "preprocessed cache not found (pass --prep)")
    ds = PreparedDataset(prep)
    ids = (ds.split("test") or ds.case_ids)[:1 if quick else cases]
    steps = steps or (QUICK_STEPS if quick else STEPS)
    frames = []
    for solver, ks in steps.items():
        df = sampling_study(ckpt, prep, solvers=(solver,), steps=tuple(ks), n_max=1, seed=seed,
                            case_ids=ids, device=device, progress=False)
        frames.append(df)
        for k in ks:
            sub = df[df.steps == k]
            print(f"  {solver:8s} {k:3d} steps (NFE {nfe(solver, k):3d}): Dice {sub.dice.mean():.3f} "
                  f"± {sub.dice.std(ddof=0):.3f}, {sub.seconds.mean():.2f} s/case", flush=True)
    import pandas as pd
    per_case = pd.concat(frames, ignore_index=True)
    summary = (per_case.groupby(["solver", "steps", "nfe"], as_index=False)
               .agg(dice_mean=("dice", "mean"), dice_std=("dice", "std"), hd95_mean=("hd95", "mean"),
                    seconds_per_case=("seconds", "mean"), cases=("case_id", "nunique")))
    results = {}
    for solver, g in summary.groupby("solver"):
        results[solver] = {int(row.nfe): round(float(row.dice_mean), 4) for row in g.itertuples()}
    best = summary.loc[summary.dice_mean.idxmax()]
    results["best"] = dict(solver=best.solver, steps=int(best.steps), nfe=int(best.nfe), dice=round(float(best.dice_mean), 4))
    setup = dict(run=str(run_dir), checkpoint=str(r.path), step=r.step, mode=r.mode, prep=str(prep),
                 cases=ids, steps=steps, ensemble=1, seed=seed, device=device, quick=quick)
    rows = per_case.assign(seconds=per_case.seconds.round(4)).to_dict("records")
    return report.write_result(out, NAME, desc, machine, setup, results, rows, _plot, seconds_total=time.time() - t0,
                               notes=[f"Dice per case, one member (seed {seed}); mean over {len(ids)} test case(s)"])


def _plot(df):
    "Mean Dice (± std over cases) against NFE, one line per solver."
    sns = report.style()
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.0, 3.2))
    sns.lineplot(df, x="nfe", y="dice", hue="solver", marker="o", errorbar="sd", ax=ax)
    ax.set(xscale="log", xlabel="network evaluations (NFE)", ylabel="Dice (mean ± sd over cases)",
           title=f"quality per compute, {df.case_id.nunique()} test case(s), seed 0")
    ax.title.set_fontsize(9)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    ap = report.base_parser(__doc__, "smoke run: one case, 2 steps per solver")
    ap.add_argument("--run", type=Path, help="a trained run folder (its cache's test split is used)")
    ap.add_argument("--prep", type=Path, help="the run's preprocessed cache (default: the one it was trained on)")
    ap.add_argument("--cases", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    try:
        run(a.out, a.quick, a.overwrite, a.device, a.run, a.cases, a.seed, prep_dir=a.prep)
    except PatchDDMError as err:
        print(f"error: {err}", file=sys.stderr); return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run every benchmark and write benchmarks/results/<name>.json + .csv + .png, plus summary.json/.csv/.md (the
headline ratios against the paper's and the project's targets).

    python benchmarks/run_all.py --overwrite                 # the full run (≈10 min on 2 CPU cores, + 19–26 min for speed)
    python benchmarks/run_all.py --quick --out /tmp/bench    # smoke run (seconds; numbers meaningless)
    python benchmarks/run_all.py --overwrite --run RUN_DIR   # inference Dice and quality per compute on a trained run
    python benchmarks/run_all.py --only monai_compare --overwrite
    python benchmarks/run_all.py --only speed --overwrite    # issue 17 before/after (≈19–26 min; 2 threads)

Each measurement runs in a fresh subprocess. Targets are reported, never asserted.
"""
from __future__ import annotations

import argparse, json, sys, time, traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path: sys.path.insert(0, str(HERE))

from patchddm.core import PatchDDMError, atomic_path, save_json

import inference, memory_options, monai_compare, patch_vs_full, quality, report, skips, speed

BENCHMARKS = {m.NAME: m for m in (patch_vs_full, skips, memory_options, monai_compare, inference, quality, speed)}
README = HERE / "README.md"
MARK_BEGIN, MARK_END = "<!-- results:begin (written by run_all.py --readme) -->", "<!-- results:end -->"


def find_run(spec: str, quick: bool) -> Path | None:
    "The run folder named by --run: a path, 'none', or 'auto' (the demo's run folder, if it holds a checkpoint)."
    if spec == "none": return None
    if spec == "auto":
        if quick: return None
        from patchddm.core import load_settings
        try: demo = load_settings().results_dir / "demo" / "run"
        except PatchDDMError: return None
        return demo if any((demo / f).is_file() for f in ("best.pt", "last.pt")) else None
    p = Path(spec)
    if not p.is_dir(): raise PatchDDMError(p, "run folder not found")
    if not any((p / f).is_file() for f in ("best.pt", "last.pt")): raise PatchDDMError(p, "holds no checkpoint (best.pt or last.pt)")
    return p


def _kwargs(name: str, a: argparse.Namespace) -> dict:
    "Keyword arguments of benchmark `name`'s run() from the command line."
    kw = dict(quick=a.quick, overwrite=a.overwrite)
    if name != "skips": kw["device"] = a.device
    if name in ("inference", "quality"): kw.update(run_dir=a.run, prep_dir=a.prep)
    if a.threads is not None and name not in ("quality",): kw["threads"] = a.threads
    return kw


def summary_rows(docs: dict[str, dict]) -> list[dict]:
    "Headline rows (benchmark, quantity, measured, target, verdict) from the benchmarks' JSON dicts."
    rows = []
    def add(bench, quantity, value, target="", verdict=""):
        rows.append(dict(benchmark=bench, quantity=quantity, measured="n/a" if value is None else value,
                         target=target, verdict=verdict, date=docs[bench]["date"][:10]))
    if (d := docs.get("patch_vs_full")):
        for key, r in d["results"].items():
            P = key[1:]
            add("patch_vs_full", f"memory patch {P}³ / full {2 * int(P)}³", r["memory_ratio"], "≤ 0.135 (paper)",
                r["memory_verdict"])
            add("patch_vs_full", f"time patch {P}³ / full {2 * int(P)}³", r["time_ratio"], "≤ 0.16 (paper)",
                r["time_verdict"])
            if r.get("cpu_time_ratio") is not None:
                add("patch_vs_full", f"CPU time patch {P}³ / full {2 * int(P)}³", r["cpu_time_ratio"],
                    "≤ 0.16 (paper)", report.verdict(r["cpu_time_ratio"], 0.16, "lower"))
    if (d := docs.get("skips")):
        r = d["results"]
        add("skips", "memory concat / avg, equal width", r["memory_ratio_concat_over_avg"])
        add("skips", "avg width at concat's memory", r["width_ratio_interpolated"], "≥ 1.5 (paper 1.61)",
            r["width_verdict"])
        if r.get("width_ratio_interpolated_tensors") is not None:
            add("skips", "avg width at concat's memory (live tensors)", r["width_ratio_interpolated_tensors"],
                "≥ 1.5 (paper 1.61)", report.verdict(r["width_ratio_interpolated_tensors"], 1.5, "higher"))
    if (d := docs.get("memory_options")):
        for opt, r in d["results"].items():
            add("memory_options", f"{opt}: memory / fp32", r["memory_ratio"])
            add("memory_options", f"{opt}: time / fp32", r["time_ratio"])
            if r.get("cpu_time_ratio") is not None: add("memory_options", f"{opt}: CPU time / fp32", r["cpu_time_ratio"])
    if (d := docs.get("monai_compare")):
        for size, r in d["results"].items():
            add("monai_compare", f"{size}³ memory ours / MONAI", r["memory_ratio"])
            add("monai_compare", f"{size}³ time ours / MONAI", r["time_ratio"], "≤ 1.0", r["time_verdict"])
            if r.get("cpu_time_ratio") is not None:
                add("monai_compare", f"{size}³ CPU time ours / MONAI", r["cpu_time_ratio"], "≤ 1.0",
                    report.verdict(r["cpu_time_ratio"], 1.0, "lower"))
    if (d := docs.get("inference")):
        r = d["results"]
        for what, label in (("eval", "one evaluation"), ("ddim", "DDIM run")):
            if what in r:
                add("inference", f"memory windowed / whole, {label}", r[what]["memory_ratio"], "≤ 0.25",
                    r[what]["memory_verdict"])
                add("inference", f"time windowed / whole, {label}", r[what]["time_ratio"])
                if r[what].get("cpu_time_ratio") is not None:
                    add("inference", f"CPU time windowed / whole, {label}", r[what]["cpu_time_ratio"])
        if isinstance(r.get("dice"), dict):
            add("inference", "Dice windowed vs whole (trained run)", r["dice"]["whole_vs_window"])
        elif "ddim" in r:
            if "eval" in r:
                add("inference", "largest ε difference windowed vs whole, untrained net (mean abs ε "
                    f"{r['eval']['mean_abs_eps_whole']:.3g})", round(r["eval"]["max_abs_eps_difference"], 4))
            add("inference", f"DDIM masks equal, untrained net ({r['ddim']['voxels_differing']} voxels differ); "
                "Dice n/a", r["ddim"]["masks_equal"])
        if not r or r.get("status") == "not measured": add("inference", "not measured", None)
    if (d := docs.get("quality")):
        r = d["results"]
        if r.get("status") == "not measured": add("quality", "Dice vs NFE: not measured", None)
        else:
            for solver in ("ddim", "dpm++2m", "heun"):
                for n, dice in r.get(solver, {}).items(): add("quality", f"Dice, {solver}, NFE {n}", dice)
    if (d := docs.get("speed")):
        r = d["results"]
        if r.get("baseline") != "measured": add("speed", f"before: not measured (baseline {d['setup']['baseline'].get('rev')})", None)
        for h in r.get("headline", []): add("speed", h["quantity"], h["value"], h["target"], h["verdict"])
    return rows


def markdown(rows: list[dict], machine: dict, quick: bool) -> str:
    "The summary as a markdown table with the machine and date."
    lines = [f"Machine: {machine['device_name']}, {machine['cores']} cores, torch {machine['torch']}, "
             f"{machine['date']}{' (quick smoke run)' if quick else ''}; load average at start "
             f"{machine['load_average'][0]} (a shared machine: compare ratios, not seconds).", "",
             "| benchmark | quantity | measured | target | verdict | date |", "|---|---|---|---|---|---|"]
    cell = lambda v: str(v).replace("|", "\\|")
    lines += ["| " + " | ".join(cell(r[k]) for k in ("benchmark", "quantity", "measured", "target", "verdict", "date"))
              + " |" for r in rows]
    return "\n".join(lines) + "\n"


def update_readme(md: str) -> None:
    "Replace the results block of benchmarks/README.md (between the markers) with `md`."
    text = README.read_text()
    if MARK_BEGIN not in text or MARK_END not in text:
        raise PatchDDMError(README, f"has no results block ({MARK_BEGIN} … {MARK_END})")
    head, rest = text.split(MARK_BEGIN, 1)
    with atomic_path(README) as tmp: tmp.write_text(head + MARK_BEGIN + "\n" + md + MARK_END + rest.split(MARK_END, 1)[1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "results", help="results folder (default benchmarks/results)")
    ap.add_argument("--overwrite", action="store_true", help="replace existing results")
    ap.add_argument("--quick", action="store_true", help="fast smoke run (tiny sizes, one timed step)")
    ap.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these benchmarks")
    ap.add_argument("--run", default="auto", help="trained run folder for the inference Dice and quality benchmarks; "
                    "'auto' (default, not with --quick): RESULTS/demo/run of `make demo` where it holds a checkpoint; "
                    "'none': no run")
    ap.add_argument("--prep", type=Path, help="the run's preprocessed cache (default: the one it was trained on)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--threads", type=int, help="torch threads per measurement (default 1; speed: 2, 1 with --quick)")
    ap.add_argument("--jobs", type=int, help="benchmarks run side by side (default 1; --quick: 3). Timings of a run "
                    "with jobs > 1 disturb each other: use it for smoke runs only")
    ap.add_argument("--readme", action="store_true", help="write the summary table into benchmarks/README.md")
    a = ap.parse_args(argv)
    names = a.only or list(BENCHMARKS)
    try:
        a.run = find_run(a.run, a.quick)
        if a.run is not None: print(f"trained run: {a.run}")
        for n in names: report.check_outputs(a.out, n, a.overwrite)
        report.check_outputs(a.out, "summary", a.overwrite)
    except PatchDDMError as err:
        print(f"error: {err}", file=sys.stderr); return 1
    t0, docs, failed = time.time(), {}, []
    machine = report.machine_info("cuda" if a.device.startswith("cuda") else "cpu")

    def one(n: str) -> None:
        print(f"== {n}", flush=True)
        t1 = time.time()
        try:
            docs[n] = BENCHMARKS[n].run(a.out, **_kwargs(n, a))
        except PatchDDMError as err:
            print(f"error: {n}: {err}", file=sys.stderr); failed.append(n)
        except Exception:                                   # one broken benchmark must not lose the others
            traceback.print_exc(); failed.append(n)
        print(f"   {n}: {time.time() - t1:.0f} s", flush=True)

    jobs = a.jobs or (3 if a.quick else 1)
    if jobs == 1:
        for n in names: one(n)
    else:                                                   # measurements are subprocesses: threads suffice
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(jobs) as pool: list(pool.map(one, names))
    docs = {n: docs[n] for n in names if n in docs}
    for n in BENCHMARKS:                                    # earlier results of benchmarks not run this time
        if n not in docs and n not in failed and (a.out / f"{n}.json").is_file():
            try: docs[n] = json.loads((a.out / f"{n}.json").read_text())
            except ValueError: pass
    docs = {n: docs[n] for n in BENCHMARKS if n in docs}
    rows = summary_rows(docs)
    md = markdown(rows, machine, a.quick)
    save_json(dict(name="summary", date=machine["date"], machine=machine, quick=a.quick, jobs=jobs, failed=failed,
                   seconds_total=round(time.time() - t0, 1), rows=rows), a.out / "summary.json")
    import pandas as pd
    with atomic_path(a.out / "summary.csv") as tmp: pd.DataFrame(rows).to_csv(tmp, index=False)
    with atomic_path(a.out / "summary.md") as tmp: tmp.write_text(md)
    if a.readme and not failed: update_readme(md)
    print("\n" + md)
    print(f"total {time.time() - t0:.0f} s; results in {a.out}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

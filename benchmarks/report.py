"""Shared output plumbing of the benchmarks: machine description, JSON + CSV + seaborn figure per benchmark.

Every benchmark writes `<out>/<name>.json` (keys: name, description, date, machine, setup, results, targets, rows,
seconds_total), `<out>/<name>.csv` (the rows, one measurement each) and `<out>/<name>.png`, atomically, and refuses
to replace existing files unless `overwrite=True`.
"""
from __future__ import annotations

import datetime as _dt
import os, platform, threading
from pathlib import Path
from typing import Callable, Sequence

from patchddm.core import PatchDDMError, atomic_path, cpu_has_bf16, save_json

MiB = 2**20
SUFFIXES = (".json", ".csv", ".png")
_PLOT_LOCK = threading.Lock()          # pyplot keeps global state: one figure at a time (run_all --jobs)


def cpu_model() -> str:
    "The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"): return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str = "cpu") -> dict:
    "CPU model, cores, torch version, device name, load average and date of this machine."
    import torch
    dev_name = torch.cuda.get_device_name(0) if device.startswith("cuda") else f"cpu ({cpu_model()})"
    try: usable = len(os.sched_getaffinity(0))
    except AttributeError: usable = os.cpu_count()
    return dict(cpu=cpu_model(), cores=os.cpu_count(), usable_cores=usable, torch=torch.__version__,
                device=device, device_name=dev_name, cpu_bf16=cpu_has_bf16(), python=platform.python_version(),
                platform=platform.platform(), load_average=[round(v, 2) for v in os.getloadavg()],
                date=now())


def now() -> str:
    "Local date and time, ISO 8601 with the UTC offset, to the second."
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def outputs(out_dir: Path | str, name: str) -> list[Path]:
    "The three files benchmark `name` writes into `out_dir`."
    return [Path(out_dir) / f"{name}{s}" for s in SUFFIXES]


def check_outputs(out_dir: Path | str, name: str, overwrite: bool) -> None:
    "Raise PatchDDMError before any work if an output of `name` exists and `overwrite` is False."
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise PatchDDMError(out_dir, "exists and is not a folder")
    existing = [p for p in outputs(out_dir, name) if p.exists()]
    if existing and not overwrite:
        raise PatchDDMError(existing[0], "exists (pass --overwrite to replace the benchmark results)")


def write_result(out_dir: Path | str, name: str, description: str, machine: dict, setup: dict, results: dict,
                 rows: Sequence[dict], plot: Callable | None, targets: dict | None = None,
                 seconds_total: float | None = None, notes: Sequence[str] = ()) -> dict:
    "Write `<name>.json`, `<name>.csv` and (when `plot(df) → figure` is given) `<name>.png`; return the JSON dict."
    import pandas as pd
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(list(rows))
    doc = dict(name=name, description=description, date=machine.get("date", now()), machine=machine, setup=setup,
               results=results, targets=targets or {}, notes=list(notes), rows=df.to_dict("records"),
               seconds_total=None if seconds_total is None else round(seconds_total, 1))
    json_p, csv_p, png_p = outputs(out, name)
    with atomic_path(csv_p) as tmp: df.to_csv(tmp, index=False)
    if plot is not None and len(df):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        with _PLOT_LOCK:
            fig = plot(df)
            fig.text(0.995, 0.005, f"{machine['device_name']}, torch {machine['torch']}, {machine['date'][:10]}",
                     ha="right", va="bottom", fontsize=6, color="0.4")
            with atomic_path(png_p) as tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
            plt.close(fig)
    save_json(doc, json_p)
    return doc


def ratio(a: float | None, b: float | None, digits: int = 3) -> float | None:
    "a / b rounded, or None when either is missing or b is 0."
    if a is None or b is None or b == 0: return None
    return round(a / b, digits)


def verdict(value: float | None, target: float, better: str) -> str:
    "'meets' / 'misses' the target (better: 'lower' or 'higher'), or 'n/a'."
    if value is None: return "n/a"
    ok = value <= target if better == "lower" else value >= target
    return "meets" if ok else "misses"


def shared_legend(fig, axes, title: str | None = None) -> None:
    "Replace the per-axes legends by one row below the panels (keeps bar labels readable)."
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes:
        if ax.get_legend() is not None: ax.get_legend().remove()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=7, frameon=False, title=title)
    fig.tight_layout(rect=(0, 0.08, 1, 1))


def style():
    "Seaborn's theme for all benchmark figures."
    import seaborn as sns
    sns.set_theme(style="whitegrid", context="paper", font_scale=0.95)
    return sns


def base_parser(doc: str, quick_help: str, device: bool = True):
    "An argparse parser with the options every benchmark shares: --out, --overwrite, --quick (and --device)."
    import argparse
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--quick", action="store_true", help=quick_help)
    if device: ap.add_argument("--device", default="auto")
    return ap

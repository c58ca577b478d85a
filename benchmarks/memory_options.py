"""Memory options of the training step: bf16 autocast and activation checkpointing, each on and off, as peak-memory
and time ratios against plain fp32 (small preset, one P³ patch, 8 input channels).

Each point is `patchddm.profiling.peak_memory` (fresh subprocess, batch 1, forward + loss + backward): peak memory above
the process baseline and the median time of `repeats` steps. bf16 autocast pays off only where the CPU has native
bf16 (avx512_bf16 / AMX; recorded as machine.cpu_bf16) or on a GPU. Measured, never asserted.

    python benchmarks/memory_options.py --out benchmarks/results
"""
from __future__ import annotations

import sys, time
from pathlib import Path

from patchddm.core import PatchDDMError, pick_device
from patchddm.profiling import peak_memory
from patchddm.model import preset_config

import report

NAME = "memory_options"
OPTIONS = (("fp32", None, False), ("bf16", "bf16", False), ("fp32 + checkpointing", None, True),
           ("bf16 + checkpointing", "bf16", True))


def run(out: Path, quick: bool = False, overwrite: bool = False, device: str = "auto", preset: str = "small",
        size: int | None = None, repeats: int | None = None, threads: int | None = 1) -> dict:
    "Measure the four option combinations at `size`³ and write the results; return the JSON dict."
    report.check_outputs(out, NAME, overwrite)
    device = str(pick_device(device))
    size = size or (16 if quick else (128 if device.startswith("cuda") else 48))
    repeats = repeats or (1 if quick else 3)
    machine, t0, rows = report.machine_info(device), time.time(), []
    cfg = preset_config(preset)
    for label, amp, ckpt in OPTIONS:
        r = peak_memory(cfg, size, train=True, device=device, amp=amp, checkpoint=ckpt, repeats=repeats,
                        warmup=0 if quick else 1, threads=threads if device == "cpu" else None)
        rows.append(dict(option=label, amp=amp or "none", checkpointing=ckpt, size=size,
                         peak_MiB=round(r["peak_bytes"] / report.MiB, 1), seconds=round(r["seconds_per_eval"], 4),
                         seconds_all=[round(s, 4) for s in r["seconds"]],
                         cpu_seconds=None if r.get("cpu_seconds_per_eval") is None else round(r["cpu_seconds_per_eval"], 4),
                         method=r["method"]))
        print(f"  {size}³ {label:22s}: peak {rows[-1]['peak_MiB']:8.1f} MiB, {rows[-1]['seconds']:.3f} s/step", flush=True)
    ref = rows[0]
    for row in rows:
        row["memory_ratio"] = report.ratio(row["peak_MiB"], ref["peak_MiB"])
        row["time_ratio"] = report.ratio(row["seconds"], ref["seconds"])
        row["cpu_time_ratio"] = report.ratio(row["cpu_seconds"], ref["cpu_seconds"])
    results = {row["option"]: dict(memory_ratio=row["memory_ratio"], time_ratio=row["time_ratio"],
                                   cpu_time_ratio=row["cpu_time_ratio"]) for row in rows[1:]}
    setup = dict(preset=preset, model=cfg.to_dict(), size=size, in_ch=cfg.in_ch, device=device, batch=1,
                 repeats=repeats, threads=threads, seed=0, quick=quick,
                 step="forward + loss + backward (patchddm.profiling.peak_memory)")
    notes = [] if machine["cpu_bf16"] or device.startswith("cuda") else \
        ["this CPU has no native bf16: bf16 autocast runs emulated and is expected to be slow"]
    return report.write_result(out, NAME, __doc__.split("\n\n")[0].replace("\n", " "), machine, setup, results,
                               rows, _plot, seconds_total=time.time() - t0, notes=notes)


def _plot(df):
    "Memory and time ratios (vs fp32) per option."
    sns = report.style()
    import matplotlib.pyplot as plt
    long = df.melt(id_vars=["option"], value_vars=["memory_ratio", "time_ratio"], var_name="ratio", value_name="× fp32")
    long["ratio"] = long["ratio"].map({"memory_ratio": "peak memory", "time_ratio": "time per step"})
    fig, ax = plt.subplots(figsize=(6.2, 3.0))
    sns.barplot(long, x="option", y="× fp32", hue="ratio", ax=ax, palette="deep")
    ax.axhline(1, color="0.3", lw=0.8)
    for c in ax.containers: ax.bar_label(c, fmt="%.2f", fontsize=7)
    ax.set(xlabel="", title=f"training step, {int(df['size'].iloc[0])}³ patch, small preset, batch 1, seed 0")
    ax.title.set_fontsize(9); ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    ap = report.base_parser(__doc__, "smoke run: 16³, one timed step")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--size", type=int, help="patch edge (default: CPU 48, GPU 128)")
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    try:
        run(a.out, a.quick, a.overwrite, a.device, a.preset, a.size, a.repeats, a.threads)
    except PatchDDMError as err:
        print(f"error: {err}", file=sys.stderr); return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

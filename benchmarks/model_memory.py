"""Averaging vs concatenating skips: peak training memory at equal width, and the widest averaging U-Net that
fits in the memory of the concatenating one (the paper's "1.61x wider at equal memory").

Every measurement is one forward + backward pass (fp32, batch 1, seed 0) of `patchddm.model.UNet3D` in a fresh
subprocess (`patchddm.profiling.peak_memory`): peak resident memory above the process's baseline after imports,
model build and input allocation. Measured, not asserted.

    python benchmarks/model_memory.py --out benchmarks/results/model_memory.json
"""
from __future__ import annotations

import argparse, os, platform, sys, time
from pathlib import Path

import torch

from patchddm.core import PatchDDMError, save_json
from patchddm.model import UNetConfig
from patchddm.profiling import peak_memory


def cpu_name() -> str:
    "The CPU model from /proc/cpuinfo (or what platform knows)."
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"): return line.split(":", 1)[1].strip()
    except OSError: pass
    return platform.processor() or platform.machine()


def config(base: int, skip: str, args: argparse.Namespace) -> UNetConfig:
    "The benchmarked architecture at width `base` (GroupNorm groups = base, as in the paper preset)."
    return UNetConfig(in_ch=8, base=base, mults=tuple(args.mults), num_res_blocks=args.res_blocks,
                      groups=base, skip=skip)


def measure(base: int, skip: str, args: argparse.Namespace, log: list) -> dict:
    "Peak resident and tensor bytes of one training pass at width `base`; also appended to `log`."
    r = peak_memory(config(base, skip, args), args.size, train=True, threads=args.threads, repeats=1, tensors=True)
    row = dict(base=base, skip=skip, params=r["params"], peak_MiB=round(r["peak_bytes"] / 2**20, 1),
               tensor_peak_MiB=round(r["tensor_peak_bytes"] / 2**20, 1),
               baseline_MiB=round(r["baseline_bytes"] / 2**20, 1), seconds=round(r["seconds_per_eval"], 3))
    log.append(row)
    print(f"  {skip:6s} base {base:3d}: {r['params'] / 1e6:6.2f} M params, peak {row['peak_MiB']:7.1f} MiB resident, "
          f"{row['tensor_peak_MiB']:7.1f} MiB tensors, {r['seconds_per_eval']:.2f} s", flush=True)
    return dict(rss=r["peak_bytes"], tensors=r["tensor_peak_bytes"])


def crossing(points: dict[int, float], target: float) -> float | None:
    "Width where the piecewise-linear curve through `points` (width → bytes) first exceeds `target`."
    pts = sorted(points.items())
    for (b0, v0), (b1, v1) in zip(pts, pts[1:]):
        if v0 <= target < v1: return b0 + (target - v0) / (v1 - v0) * (b1 - b0)
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/model_memory.json"))
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--size", type=int, default=64, help="cube side of the input (default 64)")
    p.add_argument("--base", type=int, default=8, help="width of the concatenating reference net (default 8)")
    p.add_argument("--mults", type=int, nargs="+", default=[1, 3, 4, 4, 4, 4, 4], help="channel multipliers (paper's)")
    p.add_argument("--res-blocks", type=int, default=2, help="residual blocks per level (paper: 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the measuring process (default 1)")
    args = p.parse_args(argv)
    try:
        if args.out.exists() and not args.overwrite:
            raise PatchDDMError(args.out, "exists (pass --overwrite to replace it)")
        t0, log = time.time(), []
        print(f"{args.size}³ training pass, mults {tuple(args.mults)}, {args.res_blocks} res blocks, fp32, batch 1, "
              f"{args.threads} thread(s)")
        concat = measure(args.base, "concat", args, log)
        avg = {args.base: measure(args.base, "avg", args, log)}
        # widest averaging net within the concatenating net's resident peak: bracket, then bisect integer widths
        lo, hi = args.base, 2 * args.base
        while True:
            avg[hi] = measure(hi, "avg", args, log)
            if avg[hi]["rss"] > concat["rss"]: break
            lo, hi = hi, 2 * hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            avg[mid] = measure(mid, "avg", args, log)
            if avg[mid]["rss"] <= concat["rss"]: lo = mid
            else: hi = mid
        # memory is close to linear in the width: interpolate where each curve crosses the concatenating net's peak
        frac = {k: crossing({b: v[k] for b, v in avg.items()}, concat[k]) for k in ("rss", "tensors")}
        avg_same = avg[args.base]["rss"]
        result = dict(
            description=__doc__.split("\n\n")[0].replace("\n", " "),
            setup=dict(size=args.size, mults=args.mults, res_blocks=args.res_blocks, groups="= base", dtype="float32",
                       batch=1, threads=args.threads, seed=0, torch=torch.__version__, python=platform.python_version(),
                       cpu=cpu_name(), cpu_count=os.cpu_count()),
            reference_base=args.base,
            peak_MiB=dict(concat=round(concat["rss"] / 2**20, 1), avg=round(avg_same / 2**20, 1)),
            tensor_peak_MiB=dict(concat=round(concat["tensors"] / 2**20, 1),
                                 avg=round(avg[args.base]["tensors"] / 2**20, 1)),
            memory_ratio_concat_over_avg=round(concat["rss"] / avg_same, 3),
            tensor_memory_ratio_concat_over_avg=round(concat["tensors"] / avg[args.base]["tensors"], 3),
            widest_avg_base_within_concat_memory=lo,
            width_ratio_integer=round(lo / args.base, 3),
            width_ratio_interpolated=round(frac["rss"] / args.base, 3) if frac["rss"] else None,
            width_ratio_interpolated_tensors=round(frac["tensors"] / args.base, 3) if frac["tensors"] else None,
            paper_width_ratio=1.61,
            measurements=log,
            seconds_total=round(time.time() - t0, 1),
        )
        save_json(result, args.out)
    except PatchDDMError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    r = result
    print(f"\nbase {args.base}: concat {r['peak_MiB']['concat']:.0f} MiB, avg {r['peak_MiB']['avg']:.0f} MiB resident "
          f"(concat/avg {r['memory_ratio_concat_over_avg']:.2f}; tensors only {r['tensor_memory_ratio_concat_over_avg']:.2f})")
    print(f"widest avg within concat's memory: base {lo} (×{r['width_ratio_integer']:.2f}); interpolated "
          f"×{r['width_ratio_interpolated']} resident, ×{r['width_ratio_interpolated_tensors']} tensors; paper ×1.61")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

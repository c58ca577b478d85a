"""Averaging vs concatenating skips: peak training memory at equal width, and the widest averaging U-Net that
fits in the memory of the concatenating one (the paper's "1.61x wider at equal memory").

Every measurement is one forward + backward pass (fp32, batch 1, seed 0) of `patchddm.model.UNet3D` in a fresh
subprocess (`patchddm.model.peak_memory`): peak resident memory above the process's baseline after imports,
model build and input allocation. Measured, not asserted.

    python benchmarks/model_memory.py --out benchmarks/results/model_memory.json
"""
from __future__ import annotations

import argparse, platform, sys, time
from pathlib import Path

import torch

from patchddm.core import PatchDDMError, save_json
from patchddm.model import UNetConfig, peak_memory


def config(base: int, skip: str, args: argparse.Namespace) -> UNetConfig:
    "The benchmarked architecture at width `base` (GroupNorm groups = base, as in the paper preset)."
    return UNetConfig(in_ch=8, base=base, mults=tuple(args.mults), num_res_blocks=args.res_blocks,
                      groups=base, skip=skip)


def measure(base: int, skip: str, args: argparse.Namespace, log: list) -> int:
    "Peak bytes of one training pass at width `base`; the full result is appended to `log`."
    r = peak_memory(config(base, skip, args), args.size, train=True, threads=args.threads, repeats=1)
    log.append(dict(base=base, skip=skip, peak_MiB=round(r["peak_bytes"] / 2**20, 1),
                    baseline_MiB=round(r["baseline_bytes"] / 2**20, 1), seconds=round(r["seconds_per_eval"], 3),
                    params=r["params"]))
    print(f"  {skip:6s} base {base:3d}: {r['params'] / 1e6:6.2f} M params, peak {r['peak_bytes'] / 2**20:8.1f} MiB, "
          f"{r['seconds_per_eval']:.2f} s", flush=True)
    return r["peak_bytes"]


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
        avg_same = measure(args.base, "avg", args, log)
        # widest averaging net within the concatenating net's memory: bracket, then bisect over integer widths
        lo, lo_mem, hi = args.base, avg_same, 2 * args.base
        mems = {lo: lo_mem}
        while (m := measure(hi, "avg", args, log)) <= concat:
            mems[hi] = m; lo, hi = hi, 2 * hi
        mems[hi] = m
        while hi - lo > 1:
            mid = (lo + hi) // 2
            mems[mid] = measure(mid, "avg", args, log)
            if mems[mid] <= concat: lo = mid
            else: hi = mid
        # memory is close to linear in the width between two neighbouring widths: interpolate the crossing
        frac = lo + (concat - mems[lo]) / (mems[hi] - mems[lo]) if mems[hi] > mems[lo] else float(lo)
        result = dict(
            description=__doc__.split("\n\n")[0].replace("\n", " "),
            setup=dict(size=args.size, mults=args.mults, res_blocks=args.res_blocks, groups="= base", dtype="float32",
                       batch=1, threads=args.threads, seed=0, torch=torch.__version__, python=platform.python_version(),
                       machine=platform.machine(), processor=platform.processor() or platform.machine()),
            reference_base=args.base,
            peak_MiB=dict(concat=round(concat / 2**20, 1), avg=round(avg_same / 2**20, 1)),
            memory_ratio_concat_over_avg=round(concat / avg_same, 3),
            widest_avg_base_within_concat_memory=lo,
            width_ratio_integer=round(lo / args.base, 3),
            width_ratio_interpolated=round(frac / args.base, 3),
            paper_width_ratio=1.61,
            measurements=log,
            seconds_total=round(time.time() - t0, 1),
        )
        save_json(result, args.out)
    except PatchDDMError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"\nbase {args.base}: concat {concat / 2**20:.0f} MiB, avg {avg_same / 2**20:.0f} MiB "
          f"(concat/avg = {concat / avg_same:.2f})")
    print(f"widest avg within concat's memory: base {lo} (×{lo / args.base:.2f}); "
          f"interpolated ×{frac / args.base:.2f}; paper ×1.61")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

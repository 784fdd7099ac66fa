"""Measure how far tiled fusion is from untiled fusion, per tile size (the figures in docs/getting-started.md).

ReFusion's attention pools statistics over its whole input, so fusing an image in tiles is not exactly the same as
fusing it whole. This script fuses real pairs both ways with the same :class:`tdfusion_core.Fuser` settings as
``tdfusion fuse`` (min-max stretch, 8-bit output) and reports, per tile size, the difference in grey levels.

    OMP_NUM_THREADS=1 python examples/tiling_difference.py --checkpoint ../shared/weights/ReFusion_IVIF.pth \\
        --data ../shared/data/RoadScene/train --pairs 6 --out tiling.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from tdfusion_core.apps.fuse import Fuser
from tdfusion_core.common.io import to_uint8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True, help="split folder holding ir/ and vi/")
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--tiles", default="64,96,128,192,256,384")
    parser.add_argument("--overlap-fraction", type=float, default=0.125, help="overlap as a fraction of the tile")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    torch.set_num_threads(max(torch.get_num_threads(), 1))
    names = sorted(p.stem for p in Path(args.data, "ir").glob("*.png"))[: args.pairs]
    whole = Fuser(args.checkpoint, device=args.device, tile_size=None)
    reference = {
        n: to_uint8(whole(Path(args.data, "ir", f"{n}.png"), Path(args.data, "vi", f"{n}.png")).gray) for n in names
    }
    sizes = {n: list(reference[n].shape) for n in names}
    rows = []
    for tile in (int(t) for t in args.tiles.split(",")):
        overlap = max(8, round(tile * args.overlap_fraction))
        tiled = Fuser(args.checkpoint, device=args.device, tile_size=tile, tile_overlap=overlap, max_pixels=None)
        diffs, start = [], time.perf_counter()
        for n in names:
            out = to_uint8(tiled(Path(args.data, "ir", f"{n}.png"), Path(args.data, "vi", f"{n}.png")).gray)
            diffs.append(np.abs(out.astype(np.int16) - reference[n].astype(np.int16)))
        flat = np.concatenate([d.ravel() for d in diffs])
        row = {
            "tile": tile,
            "overlap": overlap,
            "max_abs_grey_levels": int(flat.max()),
            "mean_abs_grey_levels": round(float(flat.mean()), 3),
            "p99_abs_grey_levels": float(np.percentile(flat, 99)),
            "fraction_over_2_levels": round(float((flat > 2).mean()), 4),
            "seconds": round(time.perf_counter() - start, 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {
        "checkpoint": str(args.checkpoint),
        "data": str(args.data),
        "pairs": names,
        "sizes_hw": sizes,
        "rows": rows,
    }
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

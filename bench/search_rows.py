"""Re-ranking reads: stored vectors by location from an index folder's parts, one ``pread`` a row
(superclip.search.ivf.PartRows, what a build uses) against the parts mapped side by side and gathered at once
(superclip.search.mapped.MappedRows, what ``serve`` uses), on the same random locations, in one process.

    python bench/search_rows.py [FOLDER] [--rows 400,1600,3200 --rounds 20]

FOLDER: an index folder (default: bench/search_10m.py's ``easy`` 10M folder). For each batch size, ``--rounds``
batches of random (part, row) locations: each read by both readers twice, in alternating order; the first read of a
batch (its rows may be out of the page cache, or not yet mapped) and the second (warm) are reported separately, as
medians, with the reader's process resident memory (anonymous / file-backed) at the end.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
from search_data import CACHE

from superclip.search.ivf import PartRows
from superclip.search.layout import Layout
from superclip.search.mapped import mapped_rows, npy_layout


def rss() -> str:
    got = {}
    for line in open("/proc/self/status"):
        if line.startswith(("RssAnon", "RssFile")):
            key, value, _ = line.split()
            got[key.rstrip(":")] = int(value) / 2 ** 20
    return f"anonymous {got['RssAnon']:.2f} GiB, file-backed {got['RssFile']:.2f} GiB"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", nargs="?", default=str(CACHE / "folder-easy-10000000" / "idx"))
    ap.add_argument("--rows", default="400,1600,3200")
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    layout = Layout(Path(args.folder))
    parts = sorted(int(p.stem.rsplit("_", 1)[1]) for p in (layout.root / "img_emb").glob("img_emb_*.npy"))
    if not parts:
        sys.exit(f"no parts in {args.folder}")
    sizes = np.asarray([npy_layout(layout.emb(p))[2][0] for p in parts])
    readers = {"pread": PartRows(layout.emb), "mapped": mapped_rows(layout.emb)}
    print(f"{args.folder}: {len(parts)} parts, {sizes.sum()} rows")
    rng = np.random.default_rng(0)
    for n in [int(x) for x in args.rows.split(",")]:
        times = {(name, when): [] for name in readers for when in ("first", "warm")}
        for r in range(args.rounds):
            pick = rng.integers(0, len(parts), n)
            locs = (np.asarray(parts)[pick].astype(np.int64) << 32) | rng.integers(0, sizes[pick])
            order = list(readers) if r % 2 == 0 else list(readers)[::-1]
            got = {}
            for when in ("first", "warm"):
                for name in order:
                    t0 = time.perf_counter()
                    got[name] = readers[name](locs)
                    times[(name, when)].append(1000 * (time.perf_counter() - t0))
            assert np.array_equal(got["pread"], got["mapped"])
        cells = ", ".join(f"{name} {when} {np.median(v):.2f} ms" for (name, when), v in times.items())
        print(f"{n} rows: {cells}; warm ratio pread / mapped "
              f"{np.median(times[('pread', 'warm')]) / np.median(times[('mapped', 'warm')]):.2f}", flush=True)
    print(f"resident memory of this process: {rss()}")


if __name__ == "__main__":
    main()

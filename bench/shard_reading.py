"""What reading shards without trusting them costs: our header-by-header index (``superclip.data.tars.walk``)
against ``tarfile``'s own member list on the same shard, and ``decode_image`` (EXIF check, mode rules) against a
bare ``Image.open(...).convert("RGB")`` on the same JPEGs. Printed as ratios against the baseline measured in
the same run.

    python bench/shard_reading.py [--samples 5000 --rounds 5]
"""
import argparse
import io
import statistics
import tarfile
import time

from PIL import Image

from superclip.data.images import decode_image
from superclip.data.tars import walk


def shard(samples: int) -> bytes:
    jpeg = io.BytesIO()
    Image.effect_noise((224, 224), 60).convert("RGB").save(jpeg, format="JPEG", quality=90)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(samples):
            for ext, data in (("jpg", jpeg.getvalue()), ("txt", b"a photo of noise")):
                info = tarfile.TarInfo(f"{i:08d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def median_seconds(fn, rounds):
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    data = shard(args.samples)
    f = io.BytesIO(data)
    ours = median_seconds(lambda: walk(f, len(data)), args.rounds)
    theirs = median_seconds(lambda: tarfile.open(fileobj=io.BytesIO(data), mode="r:").getmembers(), args.rounds)
    assert len(walk(f, len(data)).members) == 2 * args.samples
    print(f"index of a {len(data) / 1e6:.1f} MB shard ({args.samples} samples): walk {ours * 1e3:.1f} ms, "
          f"tarfile {theirs * 1e3:.1f} ms, ratio {ours / theirs:.2f}")
    jpegs = [data[m.offset:m.offset + m.size] for m in walk(f, len(data)).members[:400:2]]
    ours = median_seconds(lambda: [decode_image(b) for b in jpegs], args.rounds)
    theirs = median_seconds(lambda: [Image.open(io.BytesIO(b)).convert("RGB") for b in jpegs], args.rounds)
    print(f"decode of {len(jpegs)} 224 px JPEGs: decode_image {ours / len(jpegs) * 1e3:.2f} ms each, "
          f"Image.open().convert('RGB') {theirs / len(jpegs) * 1e3:.2f} ms each, ratio {ours / theirs:.2f}")


if __name__ == "__main__":
    main()

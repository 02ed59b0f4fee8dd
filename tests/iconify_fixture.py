"""The IconifyJSON fixture (tests/data/iconify/package, a handful of tiny sets drawn for the tests) packed as an npm
tarball, the way `npm pack @iconify/json` gives it: train sets fx-line, fx-solid, fx-thin; held out fx-round,
fx-sharp (and fx-round-duo, by fx-round's author); fx-color (multicolour) and fx-moji (emoji) left out."""
import gzip
import hashlib
import io
import tarfile
from pathlib import Path

PACKAGE = Path(__file__).parent / "data" / "iconify" / "package"
HELD_OUT = ["fx-round", "fx-sharp"]
SMALL = ["--image-size", "32", "--max-per-set", "40", "--zeroshot-classes", "6", "--zeroshot-per-class", "5",
         "--retrieval-items", "20", "--compositional-per-type", "8", "--dense-classes", "4", "--dense-train", "6",
         "--dense-test", "4", "--shard-size", "25", "--no-progress"]


def pack(dest: Path) -> tuple:
    """(tarball path, sha256): package/ in a .tgz with fixed metadata, so its bytes are the same every time."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(PACKAGE.rglob("*")):
            if path.is_file():
                data = path.read_bytes()
                info = tarfile.TarInfo(f"package/{path.relative_to(PACKAGE)}")
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(gzip.compress(buf.getvalue(), mtime=0))
    return dest, hashlib.sha256(dest.read_bytes()).hexdigest()


def argv(tarball: Path, sha: str, out: Path, *extra: str) -> list:
    return ["data", "icons", "--out", str(out), "--tarball", str(tarball), "--sha256", sha, "--held-out", *HELD_OUT,
            *SMALL, *extra]

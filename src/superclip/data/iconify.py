"""The ``@iconify/json`` npm package: fetching it at a pinned version (``npm pack``, sha256 checked) and reading its
icon sets (IconifyJSON: one ``package/json/PREFIX.json`` per set, the sets listed in ``package/collections.json``).

Which sets a corpus may use is decided here: every emoji set is left out (emoji are kept for checks the project
never trains on), and by default also multicolour sets, brand logos and flags (their names are brands and
countries, not described drawings) and sets under a non-commercial licence. Held-out sets are held out with every
other set of the same author, so that a variant of a held-out set (``heroicons-outline`` beside ``heroicons``) never
reaches training.
"""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from ..config import ICONIFY_VERSION
from ..errors import ConfigError
from ..files import file_sha256

log = logging.getLogger(__name__)

PACKAGE = "@iconify/json"
PINNED_VERSION = ICONIFY_VERSION
# sha256 of the tarball `npm pack @iconify/json@VERSION` writes (npm itself checks the registry's sha512)
KNOWN_SHA256 = {"2.2.553": "acf23ea102e682c28c367f76d44caa60b90365570201304358891386d52393a1"}
# whole sets never trained on, one per author family, drawn in different styles (outline, filled, duotone, ...)
DEFAULT_HELD_OUT = ("tabler", "ph", "ri", "bi", "carbon", "iconoir", "heroicons", "mingcute")
EMOJI_WORDS = ("emoji", "moji", "twemoji", "noto")
LEFT_OUT_CATEGORIES = ("Emoji", "Logos", "Flags")


@dataclass(frozen=True)
class Icon:
    """One drawing: the SVG ``body`` inside the box (left, top, width, height) in the set's units."""

    name: str
    body: str
    left: float
    top: float
    width: float
    height: float
    category: Optional[str] = None  # the set's own grouping of the icon ("Account / User"), where it has one


@dataclass
class IconSet:
    prefix: str
    info: Dict  # IconifyJSON "info": name, author {name, url}, license {title, spdx, url}, category, palette, ...
    icons: Dict[str, Icon] = field(default_factory=dict)
    hidden: int = 0  # icons the set marks hidden (deprecated names), never used
    names: frozenset = frozenset()  # every icon name of the set, also of icons not kept (the style check's siblings)

    @property
    def name(self) -> str:
        return self.info.get("name", self.prefix)

    @property
    def author(self) -> str:
        return (self.info.get("author") or {}).get("name", "unknown")


def is_emoji(prefix: str, info: Dict) -> bool:
    """Emoji sets (twemoji, noto, fluent-emoji, openmoji, emojione, ...): by category or by name."""
    return info.get("category") == "Emoji" or any(w in prefix for w in EMOJI_WORDS)


def left_out_by_default(prefix: str, info: Dict) -> Optional[str]:
    """Why a set is not used unless named, or None. Emoji sets are never used, named or not."""
    if is_emoji(prefix, info):
        return "emoji"
    if info.get("category") in LEFT_OUT_CATEGORIES:
        return info["category"].lower()
    if info.get("palette"):
        return "multicolour"
    if "NC" in ((info.get("license") or {}).get("spdx") or ""):
        return "non-commercial licence"
    return None


def expected_sha256(version: str, given: Optional[str]) -> str:
    """The sha256 a tarball of ``version`` must have: ``given``, else the one known for the pinned version."""
    if given:
        return given.lower()
    if version not in KNOWN_SHA256:
        raise ConfigError(f"no known sha256 for {PACKAGE} {version}: pass --sha256 (the tarball's sha256sum), or use "
                          f"the pinned version {PINNED_VERSION}")
    return KNOWN_SHA256[version]


def check_sha256(path: Path, expected: str) -> str:
    digest = file_sha256(path)
    if digest != expected:
        raise ConfigError(f"{path} has sha256 {digest}, expected {expected}: not the pinned {PACKAGE} tarball "
                          "(a different version, a damaged download, or --sha256 is wrong)")
    return digest


def fetch_package(dest: Path, version: str = PINNED_VERSION, registry: Optional[str] = None,
                  fetch_retries: Optional[int] = None) -> Path:
    """``npm pack @iconify/json@VERSION`` into ``dest``; returns the tarball's path. npm missing, the registry
    unreachable or the version unknown is a ConfigError of one line."""
    npm = shutil.which("npm")
    if npm is None:
        raise ConfigError(f"could not fetch {PACKAGE}@{version}: npm is not on PATH (install npm, or pass --tarball "
                          "with a tarball you already have)")
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [npm, "pack", f"{PACKAGE}@{version}", "--pack-destination", str(dest), "--json"]
    if registry:
        cmd += ["--registry", registry]
    if fetch_retries is not None:
        cmd += ["--fetch-retries", str(fetch_retries)]
    log.info("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=dest)
    where = f" from {registry}" if registry else ""
    try:
        answer = json.loads(proc.stdout) if proc.stdout.strip() else None
    except json.JSONDecodeError:
        answer = None
    if proc.returncode != 0 or not isinstance(answer, list) or not answer:
        reason = (answer or {}).get("error", {}).get("summary") if isinstance(answer, dict) else None
        if not reason:
            lines = [ln.removeprefix("npm error").strip() for ln in proc.stderr.splitlines()
                     if ln.startswith("npm error") and ln.removeprefix("npm error").strip()]
            reason = "; ".join(lines[:2]) or f"npm exited with {proc.returncode}"
        raise ConfigError(f"could not fetch {PACKAGE}@{version} with npm{where}: {reason}")
    return dest / answer[0]["filename"]


def _members(tarball: Path, wanted) -> Iterable[Tuple[str, bytes]]:
    """(member name, bytes) of the members ``wanted(name)`` accepts, streaming through the gzip once."""
    try:
        with tarfile.open(tarball, "r|*") as tar:
            for m in tar:
                if m.isfile() and wanted(m.name):
                    yield m.name, tar.extractfile(m).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ConfigError(f"cannot read {tarball} as a package tarball: {type(e).__name__}: {e}") from None


def read_index(tarball: Path) -> Tuple[str, Dict[str, Dict]]:
    """(package version, {prefix: info}) from ``package.json`` and ``collections.json``: the sets the package
    lists (files it ships without listing them are old names of listed sets)."""
    found = {}
    for name, data in _members(tarball, lambda n: n in ("package/package.json", "package/collections.json")):
        found[name] = json.loads(data)
        if len(found) == 2:
            break
    if len(found) < 2:
        raise ConfigError(f"{tarball} is not an {PACKAGE} tarball (no package/collections.json)")
    meta = found["package/package.json"]
    if meta.get("name") != PACKAGE:
        raise ConfigError(f"{tarball} holds the npm package {meta.get('name')!r}, not {PACKAGE}")
    return meta.get("version", "?"), found["package/collections.json"]


def read_sets(tarball: Path, prefixes: Iterable[str],
              reduce: Optional[Callable[[str, IconSet], IconSet]] = None) -> Dict[str, IconSet]:
    """The named sets' icons (hidden ones left out; aliases, being other names of the same drawings, too);
    ``reduce(prefix, set)`` is applied to each set as it is read (to keep only the icons a corpus draws)."""
    wanted = {f"package/json/{p}.json": p for p in prefixes}
    sets = {}
    for name, data in _members(tarball, lambda n: n in wanted):
        s = parse_set(wanted[name], json.loads(data))
        sets[wanted[name]] = reduce(wanted[name], s) if reduce else s
    missing = sorted(set(wanted.values()) - set(sets))
    if missing:
        raise ConfigError(f"{tarball} lists the set {missing[0]!r} but holds no package/json/{missing[0]}.json")
    return sets


def parse_set(prefix: str, data: Dict) -> IconSet:
    """An IconifyJSON document: defaults of the box at the top (left/top 0, width/height 16), overridden per icon."""
    box = {k: data.get(k, d) for k, d in (("left", 0), ("top", 0), ("width", 16), ("height", 16))}
    category_of = {}
    for category, names in sorted((data.get("categories") or {}).items()):
        for n in names:
            category_of.setdefault(n, category)
    out = IconSet(prefix, data.get("info") or {"name": prefix})
    for name, icon in sorted(data.get("icons", {}).items()):
        if icon.get("hidden"):
            out.hidden += 1
            continue
        out.icons[name] = Icon(name, icon["body"], *(icon.get(k, box[k]) for k in ("left", "top", "width", "height")),
                               category=category_of.get(name))
    out.names = frozenset(out.icons)
    return out


@dataclass
class Selection:
    train: List[str]
    held_out: List[str]
    left_out: Dict[str, str]  # prefix -> why (emoji, multicolour, ...)


def select_sets(index: Dict[str, Dict], train: Optional[List[str]] = None,
                held_out: Optional[List[str]] = None, version: str = "?") -> Selection:
    """Training and held-out sets. ``held_out`` (default :data:`DEFAULT_HELD_OUT`, those of them the package has)
    grows to every usable set of the same authors; ``train`` defaults to every other usable set. A name the package
    does not list, or an emoji set, is a ConfigError."""
    def known(names, flag):
        for p in names:
            if p not in index:
                close = sorted(q for q in index if p[:3] in q)[:5]
                hint = f" (similar: {', '.join(close)})" if close else ""
                raise ConfigError(f"{flag}: no icon set {p!r} in {PACKAGE} {version}{hint}")
            if is_emoji(p, index[p]):
                raise ConfigError(f"{flag}: {p!r} is an emoji set; emoji sets are never used (kept for checks the "
                                  "project never trains on)")
    known(train or [], "--sets")
    known(held_out or [], "--held-out")
    left_out = {p: why for p, info in index.items() if (why := left_out_by_default(p, info))}
    usable = [p for p in sorted(index) if p not in left_out]
    named_held = list(held_out) if held_out is not None else [p for p in DEFAULT_HELD_OUT if p in index]
    authors = {(index[p].get("author") or {}).get("name") for p in named_held} - {None}
    held = sorted(set(named_held) | {p for p in usable if (index[p].get("author") or {}).get("name") in authors})
    if train is not None:
        clash = sorted(set(train) & set(held))
        if clash:
            raise ConfigError(f"--sets: {clash[0]!r} is held out (or by a held-out set's author): a set is either "
                              "trained on or held out")
        chosen = list(dict.fromkeys(train))
    else:
        chosen = [p for p in usable if p not in held]
    return Selection(chosen, held, {p: w for p, w in left_out.items() if p not in chosen and p not in held})

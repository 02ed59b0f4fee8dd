"""Writes the IconifyJSON fixture of tests/test_icons.py (package/...): a handful of tiny icon sets drawn for the
tests (simple shapes; MIT, superclip's own), in the layout of the npm package @iconify/json. Run from this folder:
python make_fixture.py. The tests pack package/ into a tarball themselves."""
import json
from pathlib import Path

ARROW = {"left": "M19 12H6m5-6l-6 6l6 6", "right": "M5 12h13m-5-6l6 6l-6 6", "up": "M12 19V6m-6 5l6-6l6 6",
         "down": "M12 5v13m-6-5l6 6l6-6"}
SHAPES = {"home": "M4 11l8-7l8 7v9h-5v-6h-6v6H4z", "bell": "M6 17V11a6 6 0 0 1 12 0v6l2 2H4zM10 21h4",
          "star": "M12 3l2.6 6h6.4l-5.2 4l2 6.5L12 15.6L6.2 19.5l2-6.5L3 9.5h6.4z",
          "heart": "M12 20l-7.5-7.5a4.5 4.5 0 0 1 7.5-5.5a4.5 4.5 0 0 1 7.5 5.5z",
          "square": "M5 5h14v14H5z", "circle": "M12 4a8 8 0 1 0 0.01 0z", "camera": "M3 8h4l2-3h6l2 3h4v11H3zM12 10a3 3 0 1 0 0.01 0z",
          "folder": "M3 6h6l2 2h10v11H3z"}
SLASH = "M4 4l16 16"


def body(path: str, style: str, width: float) -> str:
    if style == "fill":
        return f'<path fill="currentColor" d="{path}"/>'
    return f'<path fill="none" stroke="currentColor" stroke-width="{width}" stroke-linejoin="round" d="{path}"/>'


def icon_set(prefix, name, author, licence, styles, width, shift, extra=None, category="UI 24px", palette=False,
             size=24, names=None):
    """A set's drawings: the shapes and arrows in its styles, each set moved by its own ``shift`` (and scaled to
    its box) so that no two sets draw the same pixels."""
    icons = {}
    for style in styles:
        suffix = "" if style is None else f"-{style}"
        draw = "fill" if style == "fill" else "line"
        for concept, path in SHAPES.items():
            if names is None or concept in names:
                icons[f"{concept}{suffix}"] = {"body": body(path, draw, width)}
        for direction, path in ARROW.items():
            icons[f"arrow-{direction}{suffix}"] = {"body": body(path, "line", width + (1 if draw == "fill" else 0))}
            icons[f"arrow-{direction}-circle{suffix}"] = {
                "body": body(path, "line", width) + body("M12 2a10 10 0 1 0 0.01 0z", "line", width / 2)}
        icons[f"bell-off{suffix}"] = {"body": body(SHAPES["bell"], draw, width) + body(SLASH, "line", width)}
    move = f'<g transform="translate({shift} {shift / 2}) scale({size / 24:g})">'
    icons = {n: {"body": move + i["body"] + "</g>"} for n, i in icons.items()}
    icons.update(extra or {})
    info = {"name": name, "total": len(icons), "author": {"name": author, "url": f"https://example.org/{prefix}"},
            "license": {"title": licence, "spdx": licence, "url": f"https://example.org/{prefix}/LICENSE"},
            "height": size, "category": category, "palette": palette}
    data = {"prefix": prefix, "info": info, "icons": icons, "width": size, "height": size}
    if prefix == "fx-line":
        data["categories"] = {"Arrows": sorted(n for n in icons if n.startswith("arrow")),
                              "Buildings": sorted(n for n in icons if n.startswith("home"))}
    return prefix, info, data


SETS = [
    icon_set("fx-line", "Fixture Line", "Ada Line", "MIT", ["line", "fill"], 1.5, 0.0,
             extra={"broken-thing": {"body": '<path d="M2 2h8"'},  # not XML: resvg refuses it
                    "spinner-dots": {"body": '<circle cx="12" cy="12" r="3"><animate attributeName="r" '
                                             'values="3;6;3" dur="1s"/></circle>'},
                    "old-name": {"body": '<path d="M2 2h8"/>', "hidden": True}}),
    icon_set("fx-solid", "Fixture Solid", "Bo Solid", "Apache-2.0", ["solid"], 2.5, 0.4),
    icon_set("fx-thin", "Fixture Thin", "Cy Thin", "CC-BY-4.0", [None, "filled"], 1.0, 0.8, size=16),
    icon_set("fx-round", "Fixture Round", "Di Round", "MIT", [None, "fill"], 2.0, -0.4),
    icon_set("fx-round-duo", "Fixture Round Duo", "Di Round", "MIT", ["duotone"], 2.2, -0.8),
    icon_set("fx-sharp", "Fixture Sharp", "Ed Sharp", "ISC", ["outline", "filled"], 3.0, 1.2),
    icon_set("fx-color", "Fixture Colour", "Fa Colour", "MIT", [None], 2.0, 0.2, palette=True, names={"home"}),
    icon_set("fx-moji", "Fixture Emoji", "Gi Moji", "CC-BY-4.0", [None], 2.0, 0.6, category="Emoji", palette=True,
             names={"heart", "star"}),
]

if __name__ == "__main__":
    root = Path(__file__).parent / "package"
    (root / "json").mkdir(parents=True, exist_ok=True)
    (root / "package.json").write_text(json.dumps({"name": "@iconify/json", "version": "0.0.1-fixture",
                                                   "license": "MIT"}, indent=1) + "\n")
    (root / "collections.json").write_text(json.dumps({p: info for p, info, _ in SETS}, indent=1) + "\n")
    for prefix, _, data in SETS:
        (root / "json" / f"{prefix}.json").write_text(json.dumps(data, indent=1) + "\n")
    # a file the package ships without listing it (an old name of a listed set): never read
    (root / "json" / "fx-unlisted.json").write_text(json.dumps(SETS[0][2]) + "\n")

"""Evaluation sets from the synthetic families: every caption true and every negative false against the scene that
was rendered (parsed back from the text, not taken from the generator), and masks that match the drawing."""
import json
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from superclip import cli
from superclip.data import synthetic, textures
from superclip.data.families import get_family
from superclip.errors import ConfigError


def scene_claims(text: str) -> Counter:
    """(colour, shape) -> how many the text says: "a red circle", "two red circles", joined by ", " and " and "."""
    claims = Counter()
    for phrase in re.split(r", | and ", text):
        words = phrase.split()
        assert len(words) == 3 and words[0] in ("a", "two"), phrase
        n, colour, shape = (1 if words[0] == "a" else 2), words[1], words[2]
        if n == 2:
            shape = next(s for s in synthetic.SHAPES if words[2] in (s + "s", s + "es"))
        assert colour in synthetic.COLOURS and shape in synthetic.SHAPES, phrase
        claims[(colour, shape)] += n
    return claims


def scene_truth(text: str, scene) -> bool:
    """True iff the scene holds every object the text names, as many times as it names it."""
    held = Counter((o.colour, o.shape) for o in scene.objects)
    return all(held[k] >= n for k, n in scene_claims(text).items())


TEXTURE = re.compile(r"^(fine|bold) (\w+) (.+) on (\w+) paper( inside a dark frame)?$")


def texture_truth(text: str, t) -> bool:
    m = TEXTURE.match(text)
    assert m, text
    weight, ink, pattern, paper, frame = m.groups()
    assert pattern in textures.PATTERNS, text
    return (weight, ink, pattern, paper) == (t.weight, t.ink, t.pattern, t.paper) and (not frame or t.framed)


@pytest.mark.parametrize("family", ["scenes", "textures"])
def test_every_caption_true_every_negative_false(family, tmp_path, capsys):
    n = 60
    assert cli.main(["data", "synth", "--family", family, "--out", str(tmp_path), "--compositional",
                     "--test-samples", str(n), "--seed", "4", "--no-progress"]) == 0
    out = tmp_path / "compositional"
    assert "wrote" in capsys.readouterr().out
    fam = get_family(family)
    data = fam.dataset(n, image_size=64, seed=4, split="test")
    truth = scene_truth if family == "scenes" else texture_truth
    types = sorted(p.stem for p in out.glob("*.json"))
    expected = ["add_obj", "count", "replace_att", "replace_obj", "swap_att"] if family == "scenes" else \
        ["add_obj", "replace_att", "replace_obj", "swap_att"]
    assert types == expected
    checked = Counter()
    for kind in types:
        for key, item in json.loads((out / f"{kind}.json").read_text()).items():
            i = int(key)
            scene = data.scene(i)
            image = np.asarray(Image.open(out / item["filename"]))
            assert np.array_equal(image, np.asarray(data.sample(i)[0]))  # the image is the scene's rendering
            assert truth(item["caption"], scene), (kind, item)
            assert not truth(item["negative_caption"], scene), (kind, item)
            assert item["caption"] != item["negative_caption"]
            checked[kind] += 1
    assert checked["replace_att"] == checked["replace_obj"] == n and min(checked.values()) >= 10


@pytest.mark.parametrize("family", ["scenes", "textures"])
def test_masks_match_the_drawing(family, tmp_path):
    assert cli.main(["data", "synth", "--family", family, "--out", str(tmp_path), "--masks", "--train-samples", "12",
                     "--test-samples", "5", "--no-progress"]) == 0
    fam = get_family(family)
    data = fam.dataset(12, image_size=64, seed=0, split="train")
    root = tmp_path / "masks" / "train"
    assert (root / "classes.txt").read_text().split("\n")[:-1] == list(fam.mask_classes)
    assert len(list((tmp_path / "masks" / "test" / "annotations").iterdir())) == 5
    for i in range(12):
        image = np.asarray(Image.open(root / "images" / f"{i:08d}.png").convert("RGB")).astype(int)
        mask = np.asarray(Image.open(root / "annotations" / f"{i:08d}.png"))
        assert mask.shape == image.shape[:2] and mask.max() < len(fam.mask_classes)
        scene = data.scene(i)
        if family == "scenes":
            # every shape drawn shows in the mask, and every pixel of class 0 has the background's hue
            assert set(np.unique(mask)) - {0} == {1 + synthetic.SHAPES.index(o.shape) for o in scene.objects}
            bg = np.array(synthetic.BACKGROUNDS[scene.background])
            assert np.abs(image[mask == 0] - bg).max() <= 25
        else:
            assert set(np.unique(mask)) <= {0, 1 + textures.PATTERNS.index(scene.pattern), 7}
            paper = np.array(textures.PAPERS[scene.paper])
            assert (image[mask == 0] == paper).all()  # no ink where the mask says paper
            assert (mask == 7).any() == scene.framed


def test_a_set_is_never_written_over(tmp_path):
    from superclip.data.synth_sets import write_compositional

    write_compositional(str(tmp_path / "c"), "scenes", 3)
    with pytest.raises(ConfigError, match="already holds files"):
        write_compositional(str(tmp_path / "c"), "scenes", 3)

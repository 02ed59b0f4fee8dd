import copy

import pytest
import torch

SOT, EOT = 49406, 49407
V = 49408

# A small open_clip ViT + text tower: real vocabulary (V = 49408) and context length, tiny widths.
TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": V, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture
def tiny_cfg():
    return copy.deepcopy(TINY_CFG)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def random_captions(batch: int, generator: torch.Generator, max_words: int = 12, vocab_words: int = 300) -> torch.Tensor:
    """(B, 77) int64 rows as the CLIP tokenizer makes them: SOT, words (repeats possible), EOT, zero padding.

    Words come from a small id range so that document frequencies vary and repeats happen.
    """
    ids = torch.zeros(batch, 77, dtype=torch.long)
    for i in range(batch):
        n = int(torch.randint(1, max_words + 1, (1,), generator=generator))
        words = torch.randint(300, 300 + vocab_words, (n,), generator=generator)
        ids[i, 0] = SOT
        ids[i, 1:n + 1] = words
        ids[i, n + 1] = EOT
    return ids

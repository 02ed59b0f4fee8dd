"""Where superclip train's lead over open_clip_train comes from, on bench/trainer_throughput.py's tiny model.

    python bench/trainer_breakdown.py

Times (median of 15 after 3 warm-up calls, batch 64 of the synthetic captions): the text tower's forward +
backward over all 77 positions vs cropped to the batch's last end-of-text token, the image tower, and one
AdamW step over the CLIP model's parameters with the per-tensor loop (what open_clip_train gets on a CPU),
foreach and fused kernels.
"""
import statistics
import time

import torch

import superclip
from superclip.data.synthetic import SyntheticCaptions

torch.manual_seed(0)
m = superclip.create_model("SuperCLIP-Tiny").train()
tok = superclip.get_tokenizer("SuperCLIP-Tiny")
data = SyntheticCaptions(64, seed=0)
ids = tok([data[i][1] for i in range(64)])
print("crop length", m._text_length(ids), "of", ids.shape[1])


def t(f, n=15):
    for _ in range(3):
        f()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts)


def text_step(crop):
    def f():
        m.zero_grad()
        m.crop_text = crop
        m.encode_text(ids, normalize=True).sum().backward()
    return f


print(f"text tower fwd+bwd: 77 positions {t(text_step(False)):.1f} ms, cropped {t(text_step(True)):.1f} ms")
img = torch.randn(64, 3, 64, 64)


def img_step():
    m.zero_grad()
    m.encode_image(img, normalize=True).sum().backward()


print(f"image tower fwd+bwd {t(img_step):.1f} ms")
params = [p for n, p in m.named_parameters() if not n.startswith("head.")]
for p in params:
    p.grad = torch.randn_like(p)
KINDS = (("per-tensor loop (open_clip_train's default)", {"foreach": False}), ("foreach", {"foreach": True}),
         ("fused", {"fused": True}))
n = sum(p.numel() for p in params) / 1e6
for kind, kw in KINDS:
    opt = torch.optim.AdamW(params, lr=1e-5, **kw)
    print(f"AdamW over the CLIP model's {n:.1f} M parameters, {kind}: {t(opt.step):.1f} ms")

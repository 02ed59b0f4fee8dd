import numpy as np
import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss, SigLipLoss

import superclip
from superclip.loss import document_frequency, token_classification_loss

from .conftest import EOT, SOT, V, random_captions

# losses against formulas and other implementations: in make test's second CPU setting too
pytestmark = pytest.mark.arithmetic


class NumpyReference:
    """METHOD.md's formulas transcribed in float64 NumPy with dense (B, V) targets."""

    def __init__(self, vocab=V):
        self.df = np.zeros(vocab)
        self.n = 0.0

    @staticmethod
    def multi_hot(ids, vocab=V):
        y = np.zeros((ids.shape[0], vocab))
        for i, row in enumerate(ids):
            y[i, np.unique(row)] = 1.0
        return y

    def step(self, ids, logits, update=True):
        y = self.multi_hot(ids)
        b = ids.shape[0]
        if update:
            self.df += y.sum(0) / b
            self.n += 1
        w = np.log((self.n + 1 / b) / (self.df + 1 / b))
        target = w * y
        target = target / np.maximum(np.abs(target).sum(1, keepdims=True), 1e-12)
        z = logits - logits.max(1, keepdims=True)
        log_softmax = z - np.log(np.exp(z).sum(1, keepdims=True))
        return float(np.mean(-(target * log_softmax).sum(1))), w


def _out(b, dim=16, dtype=torch.float64, g=None):
    feats = lambda: F.normalize(torch.randn(b, dim, dtype=dtype, generator=g), dim=-1)
    return {"image_features": feats(), "text_features": feats(),
            "logit_scale": torch.tensor(1 / 0.07, dtype=dtype),
            "token_logits": 3 * torch.randn(b, V, dtype=dtype, generator=g)}


def test_class_loss_matches_numpy_over_trajectory():
    g = torch.Generator().manual_seed(1)
    crit = superclip.SuperCLIPLoss(contrastive="none").train()
    ref = NumpyReference()
    for step in range(5):
        ids = random_captions(8, g)
        out = _out(8, g=g)
        losses = crit(out, ids)
        expected, w = ref.step(ids.numpy(), out["token_logits"].numpy())
        assert abs(losses["class_loss"].item() - expected) <= 1e-6, step
        assert losses["loss"].item() == losses["class_loss"].item()
        np.testing.assert_allclose(crit.cap_fq[0].numpy(), ref.df, rtol=0, atol=1e-12)
        assert crit.num_samples.item() == step + 1
        weights = crit.token_weights(ids)[0]
        assert weights[SOT].item() == 0.0 and weights[EOT].item() == 0.0 and weights[0].item() == 0.0
        assert (weights >= 0).all()
        np.testing.assert_allclose(weights.numpy()[ids.unique().numpy()], w[ids.unique().numpy()], atol=1e-12)


def test_float32_logits_close_to_float64_reference():
    g = torch.Generator().manual_seed(2)
    crit = superclip.SuperCLIPLoss(contrastive="none").train()
    ref = NumpyReference()
    for _ in range(3):
        ids = random_captions(16, g)
        logits = 3 * torch.randn(16, V, generator=g)
        got = crit({"token_logits": logits}, ids)["class_loss"].item()
        expected, _ = ref.step(ids.numpy(), logits.double().numpy())
        assert abs(got - expected) <= 1e-5 * abs(expected)


@pytest.mark.parametrize("chunk_rows", [1000, 4], ids=["one-chunk", "chunked"])
def test_sparse_gradient_equals_dense_autograd(monkeypatch, chunk_rows):
    monkeypatch.setattr("superclip.loss._CHUNK_ELEMENTS", chunk_rows * V)
    g = torch.Generator().manual_seed(3)
    ids = random_captions(6, g)
    weights = torch.rand(V, dtype=torch.float64, generator=g)
    logits = torch.randn(6, V, dtype=torch.float64, generator=g, requires_grad=True)
    before = logits.detach().clone()
    token_classification_loss(logits, ids, weights).backward()
    assert torch.equal(logits.detach(), before)  # the backward works on copies, never on the logits
    sparse_grad = logits.grad.clone()
    logits.grad = None
    y = torch.zeros(6, V, dtype=torch.float64).scatter_(1, ids, 1.0)
    target = F.normalize(y * weights, p=1, dim=1)
    (-(target * logits.log_softmax(1)).sum(1).mean()).backward()
    torch.testing.assert_close(sparse_grad, logits.grad, rtol=1e-10, atol=1e-12)


def test_repeated_tokens_count_once_and_idf_off_is_uniform():
    ids = torch.zeros(2, 77, dtype=torch.long)
    ids[0, :5] = torch.tensor([SOT, 400, 400, 400, EOT])
    ids[1, :4] = torch.tensor([SOT, 401, 402, EOT])
    assert document_frequency(ids, V)[400].item() == 1.0
    assert document_frequency(ids, V)[0].item() == 2.0
    logits = torch.randn(2, V, dtype=torch.float64)
    crit = superclip.SuperCLIPLoss(contrastive="none", idf="off").train()
    got = crit({"token_logits": logits}, ids)["class_loss"].item()
    ls = logits.log_softmax(1)
    row0 = -(ls[0, [SOT, 400, EOT, 0]]).mean()
    row1 = -(ls[1, [SOT, 401, 402, EOT, 0]]).mean()
    assert abs(got - ((row0 + row1) / 2).item()) < 1e-12
    assert crit.num_samples.item() == 0  # idf off keeps no statistics


def test_lambda_zero_equals_open_clip_clip_loss():
    out = _out(8, dtype=torch.float32)
    crit = superclip.SuperCLIPLoss(cls_weight=0.0).train()
    ids = random_captions(8, torch.Generator().manual_seed(4))
    expected = ClipLoss()(out["image_features"], out["text_features"], out["logit_scale"])
    got = crit({k: v for k, v in out.items() if k != "token_logits"}, ids)
    assert torch.equal(got["loss"], expected)
    assert got["class_loss"].item() == 0 and not crit.needs_token_logits
    assert crit.num_samples.item() == 0


def test_siglip_is_open_clip_siglip_plus_class_term():
    out = _out(8)
    out["logit_bias"] = torch.tensor(-10.0, dtype=torch.float64)
    ids = random_captions(8, torch.Generator().manual_seed(5))
    crit = superclip.SuperCLIPLoss(contrastive="siglip", cls_weight=0.7).train()
    got = crit(out, ids)
    sig = SigLipLoss()(out["image_features"], out["text_features"], out["logit_scale"], out["logit_bias"])
    expected_cls, _ = NumpyReference().step(ids.numpy(), out["token_logits"].numpy())
    assert torch.equal(got["contrastive_loss"], sig)
    assert abs(got["class_loss"].item() - expected_cls) < 1e-9
    assert abs(got["loss"].item() - (sig.item() + 0.7 * expected_cls)) < 1e-9


def test_default_is_clip_plus_one_times_class():
    out = _out(8)
    ids = random_captions(8, torch.Generator().manual_seed(6))
    got = superclip.SuperCLIPLoss().train()(out, ids)
    clip = ClipLoss()(out["image_features"], out["text_features"], out["logit_scale"])
    assert torch.equal(got["contrastive_loss"], clip)
    assert torch.equal(got["loss"], clip + got["class_loss"])


def test_statistics_round_trip_through_state_dict():
    g = torch.Generator().manual_seed(7)
    a = superclip.SuperCLIPLoss(contrastive="none").train()
    for _ in range(3):
        a({"token_logits": torch.randn(4, V)}, random_captions(4, g))
    b = superclip.SuperCLIPLoss(contrastive="none").train()
    b.load_state_dict(a.state_dict())
    assert set(a.state_dict()) == {"cap_fq", "num_samples"}
    assert a.state_dict()["cap_fq"].dtype == torch.float64 and a.state_dict()["cap_fq"].shape == (1, V)
    ids, logits = random_captions(4, g), torch.randn(4, V)
    assert torch.equal(a({"token_logits": logits}, ids)["loss"], b({"token_logits": logits}, ids)["loss"])
    assert torch.equal(a.cap_fq, b.cap_fq) and torch.equal(a.num_samples, b.num_samples)


def test_eval_and_update_false_do_not_touch_statistics():
    g = torch.Generator().manual_seed(8)
    crit = superclip.SuperCLIPLoss(contrastive="none").train()
    crit({"token_logits": torch.randn(4, V)}, random_captions(4, g))
    before = crit.cap_fq.clone()
    crit({"token_logits": torch.randn(4, V)}, random_captions(4, g), update=False)
    crit.eval()
    crit({"token_logits": torch.randn(4, V)}, random_captions(4, g))
    assert torch.equal(crit.cap_fq, before) and crit.num_samples.item() == 1


def test_fresh_eval_loss_uses_the_batch_as_statistics():
    g = torch.Generator().manual_seed(9)
    ids, logits = random_captions(6, g), torch.randn(6, V, dtype=torch.float64)
    got = superclip.SuperCLIPLoss(contrastive="none").eval()({"token_logits": logits}, ids)["class_loss"]
    expected, _ = NumpyReference().step(ids.numpy(), logits.numpy())
    assert abs(got.item() - expected) < 1e-9


def test_accumulation_updates_once_with_the_whole_step():
    g = torch.Generator().manual_seed(10)
    ids, logits = random_captions(8, g), torch.randn(8, V, dtype=torch.float64)
    full = superclip.SuperCLIPLoss(contrastive="none").train()
    whole = full({"token_logits": logits}, ids)["class_loss"]
    acc = superclip.SuperCLIPLoss(contrastive="none").train()
    acc.update(ids)
    halves = [acc({"token_logits": logits[s]}, ids[s], update=False)["class_loss"] for s in (slice(0, 4), slice(4, 8))]
    assert torch.equal(acc.cap_fq, full.cap_fq) and acc.num_samples.item() == 1
    assert abs(((halves[0] + halves[1]) / 2).item() - whole.item()) < 1e-12


def test_bad_options_raise_config_error():
    with pytest.raises(superclip.ConfigError, match="contrastive must be one of"):
        superclip.SuperCLIPLoss(contrastive="triplet")
    with pytest.raises(superclip.ConfigError, match="idf must be one of"):
        superclip.SuperCLIPLoss(idf="dataset")
    with pytest.raises(superclip.ConfigError, match="no loss at all"):
        superclip.SuperCLIPLoss(contrastive="none", cls_weight=0)


def test_bfloat16_logits_accumulate_in_float32():
    g = torch.Generator().manual_seed(13)
    ids, weights = random_captions(4, g), torch.rand(V, dtype=torch.float64, generator=g)
    logits = torch.randn(4, V, generator=g).bfloat16()
    lo = logits.clone().requires_grad_()
    loss = token_classification_loss(lo, ids, weights)
    loss.backward()
    ref = logits.float().requires_grad_()
    ref_loss = token_classification_loss(ref, ids, weights)
    ref_loss.backward()
    assert loss.dtype == torch.float32 and lo.grad.dtype == torch.bfloat16
    assert abs(loss.item() - ref_loss.item()) < 1e-6
    torch.testing.assert_close(lo.grad.float(), ref.grad, rtol=1e-2, atol=1e-6)

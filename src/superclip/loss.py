"""SuperCLIP's loss: a contrastive term (open_clip's ClipLoss / SigLipLoss) plus λ × the token-classification term.

Notation (METHOD.md): captions tokenised to ids ``T`` (B, L); multi-hot targets ``y[i, t] = 1`` for every id in
row i (all L slots, so SOT, EOT and pad 0 too; a repeated id counts once); running statistics ``cap_fq`` (sum
over steps of per-step document-frequency fractions) and ``num_samples`` (number of steps); IDF weights
``w = log((n + 1/B_global) / (df + 1/B_global))``; soft target ``ŷ = L1-normalise(w · y)``; class loss
``mean_i(-Σ_t ŷ[i, t] · log_softmax(logits)[i, t])``.

The targets are never materialised as a dense (B, V) tensor: each row keeps its (at most L) distinct ids and
their weights, and ``-Σ_t ŷ_t log_softmax(z)_t = logsumexp(z) · Σ_t ŷ_t - Σ_t ŷ_t z_t`` needs only a gather.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from open_clip.loss import ClipLoss, SigLipLoss
from torch import nn

from . import distributed
from .errors import ConfigError

CONTRASTIVE_CHOICES = ("clip", "siglip", "none")
IDF_CHOICES = ("online", "off")


def unique_tokens(token_ids: torch.Tensor):
    """(B, L) int64 -> (ids (B, L) sorted per row, first (B, L) bool: True at each id's first occurrence)."""
    ids, _ = token_ids.sort(dim=1)
    first = torch.ones_like(ids, dtype=torch.bool)
    first[:, 1:] = ids[:, 1:] != ids[:, :-1]
    return ids, first


def document_frequency(token_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(B, L) int64 -> (V,) float64: number of rows containing each id (``y.sum(0)`` without building ``y``)."""
    ids, first = unique_tokens(token_ids)
    return torch.bincount(ids[first], minlength=vocab_size)[:vocab_size].to(torch.float64)


def idf_weights(cap_fq: torch.Tensor, num_samples: torch.Tensor, global_batch_size: int) -> torch.Tensor:
    """The released code's online IDF: ``log((n + 1/B) / (df + 1/B))``, same shape as ``cap_fq``, float64.

    Ids present in every caption seen so far (df == n) get exactly 0; no weight is negative.
    """
    inv_b = 1.0 / global_batch_size
    return torch.log((num_samples + inv_b) / (cap_fq + inv_b))


# Rows per chunk in the class loss: bounds the temporaries of logsumexp / softmax to ~2**25 elements.
_CHUNK_ELEMENTS = 2 ** 25


class _SparseSoftTargetCE(torch.autograd.Function):
    """mean_i(lse_i · Σ_j w_ij - Σ_j w_ij · z[i, ids_ij]) with a hand-written backward.

    The gradient ``(softmax(z) · Σ_j w_ij - scatter(w)) / B`` is built in place in one (B, V) buffer of the
    logits' dtype, chunk by chunk in float32 (or float64), so the loss adds a single (B, V) tensor to the peak.
    """

    @staticmethod
    def forward(ctx, logits, ids, w):
        rows = max(1, _CHUNK_ELEMENTS // logits.shape[1])
        acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
        lse = torch.cat([torch.logsumexp(c.to(acc), dim=1) for c in logits.split(rows)])
        picked = logits.gather(1, ids).to(acc)
        w = w.to(acc)
        wsum = w.sum(dim=1)
        ctx.save_for_backward(logits, lse, ids, w, wsum)
        return (lse * wsum - (w * picked).sum(dim=1)).mean()

    @staticmethod
    def backward(ctx, grad):
        logits, lse, ids, w, wsum = ctx.saved_tensors
        scale = grad.to(lse.dtype) / logits.shape[0]
        rows = max(1, _CHUNK_ELEMENTS // logits.shape[1])
        out = torch.empty_like(logits)
        for start in range(0, logits.shape[0], rows):
            sl = slice(start, start + rows)
            g = logits[sl] - lse[sl, None]  # a new chunk, promoted to the accumulation dtype
            g.exp_().mul_((wsum[sl] * scale)[:, None])
            g.scatter_add_(1, ids[sl], -(w[sl] * scale))
            out[sl] = g
        return out, None, None


def token_classification_loss(
    logits: torch.Tensor, token_ids: torch.Tensor, token_weights: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Softmax cross-entropy of (B, V) ``logits`` against the L1-normalised weighted multi-hot of ``token_ids``.

    Args:
        logits: (B, V) float; half precision is accumulated in float32.
        token_ids: (B, L) int64 caption ids.
        token_weights: (V,) or (1, V) per-id weights (IDF), or None for uniform weights over each caption's ids.
    Returns:
        scalar: the mean over rows. A row whose weights are all zero contributes 0 (as ``F.normalize(p=1)``).
    """
    ids, first = unique_tokens(token_ids)
    if token_weights is None:
        w = first.to(torch.float64)
    else:
        w = token_weights.reshape(-1)[ids] * first
    w = w / w.sum(dim=1, keepdim=True).clamp_min(1e-12)
    return _SparseSoftTargetCE.apply(logits, ids, w)


class SuperCLIPLoss(nn.Module):
    """Contrastive loss + ``cls_weight`` × token-classification loss, with the IDF statistics as buffers.

    Defaults are the paper's: InfoNCE + 1.0 × online-IDF classification.

    Args:
        vocab_size: V, the classification head's outputs.
        contrastive: ``clip`` (InfoNCE, open_clip ``ClipLoss``), ``siglip`` (open_clip ``SigLipLoss``) or
            ``none`` (classification only, as SuperClass).
        cls_weight: λ. 0 gives plain CLIP/SigLIP; the model can then skip the head (``needs_token_logits``).
        idf: ``online`` (the released code's running IDF) or ``off`` (uniform weights over a caption's ids).
        local_loss, gather_with_grad: open_clip's ClipLoss semantics for multi-process training. The default
            ``gather_with_grad=None`` gathers features with their gradients whenever there are several
            processes: then DDP / FSDP's gradient average equals one process's gradient on the global batch
            (without, the contrastive gradient is 1/world_size of it while the class term's is whole).
        rank, world_size: default to the current process group; build the loss after joining it.
        siglip_dist_impl: open_clip SigLipLoss ``dist_impl``.

    Statistics: ``cap_fq`` (1, V) and ``num_samples`` (1, 1), float64, the official checkpoint's names and
    shapes. They change only in :meth:`update`, under ``no_grad``, all-reduced (mean) across ranks. In training
    mode ``criterion(out, token_ids)`` first calls ``update(token_ids)`` then computes the loss (the released
    code's order). With gradient accumulation, call ``update(all_ids_of_the_step)`` once per optimizer step and
    compute each micro-batch with ``update=False``: the step is counted once, with B = the step's whole batch.
    Evaluation (``criterion.eval()``) never updates them.
    """

    def __init__(
        self,
        vocab_size: int = 49408,
        contrastive: str = "clip",
        cls_weight: float = 1.0,
        idf: str = "online",
        local_loss: bool = False,
        gather_with_grad: Optional[bool] = None,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
        siglip_dist_impl: Optional[str] = None,
    ):
        super().__init__()
        if contrastive not in CONTRASTIVE_CHOICES:
            raise ConfigError(f"contrastive must be one of {CONTRASTIVE_CHOICES}, got {contrastive!r}")
        if idf not in IDF_CHOICES:
            raise ConfigError(f"idf must be one of {IDF_CHOICES}, got {idf!r}")
        if cls_weight < 0:
            raise ConfigError(f"cls_weight must be >= 0, got {cls_weight}")
        if contrastive == "none" and cls_weight == 0:
            raise ConfigError("contrastive='none' with cls_weight=0 leaves no loss at all")
        self.vocab_size = vocab_size
        self.contrastive = contrastive
        self.cls_weight = float(cls_weight)
        self.idf = idf
        self.rank = distributed.rank() if rank is None else rank
        self.world_size = distributed.world_size() if world_size is None else world_size
        if gather_with_grad is None:
            gather_with_grad = self.world_size > 1
        if contrastive == "clip":
            self.contrastive_fn = ClipLoss(
                local_loss=local_loss, gather_with_grad=gather_with_grad, cache_labels=True,
                rank=self.rank, world_size=self.world_size,
            )
        elif contrastive == "siglip":
            self.contrastive_fn = SigLipLoss(rank=self.rank, world_size=self.world_size, dist_impl=siglip_dist_impl)
        else:
            self.contrastive_fn = None
        self.register_buffer("cap_fq", torch.zeros(1, vocab_size, dtype=torch.float64))
        self.register_buffer("num_samples", torch.zeros(1, 1, dtype=torch.float64))
        # B_global of the latest update (the IDF formula's 1/B); not a buffer: every update sets it again.
        self.idf_batch_size: Optional[int] = None

    @property
    def needs_token_logits(self) -> bool:
        return self.cls_weight != 0

    @property
    def needs_text(self) -> bool:
        """False without a contrastive term: the text tower's features are then never used."""
        return self.contrastive_fn is not None

    @property
    def tracks_statistics(self) -> bool:
        return self.cls_weight != 0 and self.idf == "online"

    @torch.no_grad()
    def update(self, token_ids: torch.Tensor) -> None:
        """Add one optimizer step's captions (B_local, L) to the running statistics, then mean over ranks."""
        b_local = token_ids.shape[0]
        self.cap_fq += document_frequency(token_ids, self.vocab_size).to(self.cap_fq.device) / b_local
        self.num_samples += 1
        distributed.all_reduce_mean_(self.cap_fq)
        distributed.all_reduce_mean_(self.num_samples)
        self.idf_batch_size = b_local * self.world_size

    def statistics(self) -> Dict[str, object]:
        """A copy of the running statistics, for :meth:`load_statistics` (a skipped step puts them back)."""
        return {"cap_fq": self.cap_fq.clone(), "num_samples": self.num_samples.clone(),
                "idf_batch_size": self.idf_batch_size}

    @torch.no_grad()
    def load_statistics(self, stats: Dict[str, object]) -> None:
        self.cap_fq.copy_(stats["cap_fq"])
        self.num_samples.copy_(stats["num_samples"])
        self.idf_batch_size = stats["idf_batch_size"]

    def token_weights(self, token_ids: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """(1, V) float64 IDF weights from the statistics (None when ``idf='off'``).

        With empty statistics (a fresh criterion in eval mode), the given batch stands in for them.
        """
        if self.idf == "off":
            return None
        # The host sync of .item() only happens before this process's first update (eval, or a fresh loss).
        if self.idf_batch_size is None and self.num_samples.item() == 0:
            if token_ids is None:
                raise ValueError("token statistics are empty; pass the batch's token_ids")
            b = token_ids.shape[0]
            df = document_frequency(token_ids, self.vocab_size).to(self.cap_fq.device)[None] / b
            return idf_weights(df, torch.ones_like(self.num_samples), b)
        return idf_weights(self.cap_fq, self.num_samples, self.idf_batch_size or self.world_size * len(token_ids))

    def forward(
        self, out: Dict[str, torch.Tensor], token_ids: torch.Tensor, update: Optional[bool] = None,
        class_token_ids: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        """``out``: the model's dict (image_features, text_features, logit_scale, token_logits[, logit_bias]).
        ``token_ids``: (B, L) int64 captions. ``update``: default ``self.training``. ``class_token_ids``: other
        captions (B, L) for the classification term and its statistics (the paper's "dual" setting, e.g. a
        long re-caption), default ``token_ids``.

        Returns a dict of scalars: contrastive_loss, class_loss, loss.
        """
        if update is None:
            update = self.training
        cls_ids = token_ids if class_token_ids is None else class_token_ids
        if update and self.tracks_statistics:
            self.update(cls_ids)
        ref = out["image_features"] if "image_features" in out else out["token_logits"]
        zero = ref.new_zeros(())
        if self.contrastive_fn is None:
            contrastive = zero
        elif self.contrastive == "siglip":
            contrastive = self.contrastive_fn(
                out["image_features"], out["text_features"], out["logit_scale"], out["logit_bias"]
            )
        else:
            contrastive = self.contrastive_fn(out["image_features"], out["text_features"], out["logit_scale"])
        if self.cls_weight == 0:
            class_loss = zero
        else:
            weights = self.token_weights(cls_ids)
            class_loss = token_classification_loss(out["token_logits"], cls_ids, weights)
        return {
            "contrastive_loss": contrastive,
            "class_loss": class_loss,
            "loss": contrastive + self.cls_weight * class_loss,
        }

"""The training loop: set-up, epochs of ``train_step``, metrics, evaluation and checkpoints (through the
checkpoint manager)."""
from __future__ import annotations

import contextlib
import logging
import signal
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from torch.utils.data import DataLoader, IterableDataset

from .. import distributed
from ..config import TrainConfig
from ..data.loader import ResumableSampler, build_train_dataset, collate
from ..data.webdataset import expand_sources
from ..devices import resolve_device
from ..errors import ConfigError, TrainingError, TrainingInterrupted
from ..evaluate.data import is_shard_pattern
from ..evaluate.hard_negatives import compositional_items
from ..evaluate.tasks import zero_shot_classes
from ..files import atomic_write_text
from ..loss import SuperCLIPLoss
from ..model import build_model, compile_towers, get_tokenizer, get_transforms, split_model_config
from ..model_check import check_tokenizer_fits
from ..seeding import generator_seed, seed_everything
from ..strict_json import dumps
from ..weights import load_into, resolve_pretrained
from .engine import train_step
from .evaluation import evaluate_in_training, imagenet_names
from .optim import build_optimizer, build_scheduler
from .report import Reporters
from .run_folder import (append_metrics, check_folder, check_resume_latest_named, check_run_folder, folder_id,
                         nothing_to_resume, run_dir, settle_name, trim_metrics)
from .run_state import CheckpointManager, StopSignals, describe_changes, ignore_stop_signals, rng_state, set_rng_state
from .setup import apply_locks, model_config

log = logging.getLogger(__name__)


def _autocast(precision: str, device: torch.device) -> Callable:
    if precision.startswith("amp"):
        dtype = torch.bfloat16 if precision == "amp_bf16" else torch.float16
        return lambda: torch.autocast(device.type, dtype=dtype)
    return contextlib.nullcontext


def exact_gather_with_grad(cfg: TrainConfig, world_size: int) -> bool:
    """The ``gather_with_grad`` that makes N processes train one process's objective.

    DDP and FSDP2 average gradients over ranks. Without gradients through the gathered features each rank
    back-propagates the contrastive loss into its own features only, so the average is 1/N of one process's
    contrastive gradient while the class term's stays whole: λ would act as λ x N. With them (and with or
    without ``local_loss``) the average is exact; it is the default, and turning it off is refused.
    """
    if world_size == 1 or cfg.contrastive != "clip":
        return bool(cfg.gather_with_grad)
    if cfg.gather_with_grad is False:
        raise ConfigError(f"--no-gather-with-grad with {world_size} processes trains a different objective (the "
                          "contrastive gradient shrinks 1/N against the class term); drop it: features are "
                          "gathered with their gradients by default (add --local-loss to save memory)")
    return True


@dataclass
class Progress:
    """Where the run stands; the same on every rank (written at the top level of each checkpoint)."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    skipped_samples: int = 0  # unreadable samples, all ranks
    nonfinite_steps: int = 0  # steps skipped for a non-finite loss or gradient

    def state_dict(self) -> Dict[str, int]:
        return asdict(self)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for f in fields(self):
            setattr(self, f.name, int(state.get(f.name, 0)))


class Trainer:
    """Builds everything a run needs from a :class:`TrainConfig`; :meth:`fit` trains.

    ``on_step(step, metrics)`` is called on rank 0 after every optimizer step (the CLI draws its progress bar
    with it).
    """

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        check_resume_latest_named(cfg)
        model_cfg = model_config(cfg)
        split_model_config(model_cfg)  # a bad model config is one line before anything is made
        check_tokenizer_fits(model_cfg)
        self.device = resolve_device(cfg.device, distributed.local_rank())
        self.rank, self.world_size = distributed.init_from_env(self.device.type)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if cfg.global_batch_size:
            cfg.batch_size = cfg.global_batch_size // (self.world_size * cfg.accum_freq)
            if cfg.batch_size < 1:
                raise ConfigError(f"--global-batch-size {cfg.global_batch_size} is smaller than {self.world_size} "
                                  f"processes x --accum-freq {cfg.accum_freq}")
        if cfg.contrastive == "clip" and cfg.batch_size * cfg.accum_freq * self.world_size == 1:
            # softmax over one pair: the contrastive loss and its gradient are identically 0
            raise ConfigError("--batch-size 1 with the contrastive loss (--contrastive clip) trains nothing: its loss "
                              "over one image-text pair is always 0; use a batch of 2 or more (or --accum-freq, "
                              "more processes), or --contrastive none / siglip")
        # an elastic restart continues the run it restarts
        if distributed.restart_count() > 0 and cfg.resume is None:
            cfg.resume = "latest"
        settle_name(cfg)
        self._folder_existed = run_dir(cfg).is_dir()
        self.run_lock = check_run_folder(cfg)
        try:
            self._set_up()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Let go of the run folder (its lock) and the loader's workers; :meth:`fit` does this when it ends, however
        it ends."""
        self._map_loader = None  # its workers stop with it
        if getattr(self, "run_lock", None) is not None:
            self.run_lock.release()
            self.run_lock = None

    def _set_up(self) -> None:
        cfg = self.cfg
        gather_with_grad = exact_gather_with_grad(cfg, self.world_size)
        self.fsdp = cfg.fsdp and self.world_size > 1
        seed_everything(cfg.seed)  # the same initial weights on every rank (FSDP2 does not broadcast them)
        self.model, pretrained_stats = self._build_model()
        seed_everything(cfg.seed + self.rank)  # from here on (dropout, augmentation), ranks draw differently
        self.criterion = SuperCLIPLoss(
            vocab_size=self.model.vocab_size, contrastive=cfg.contrastive, cls_weight=cfg.cls_loss_weight,
            idf=cfg.idf, local_loss=cfg.local_loss, gather_with_grad=gather_with_grad,
        ).to(self.device)
        if pretrained_stats and self.criterion.tracks_statistics:
            self.criterion.load_state_dict(pretrained_stats)
        # parts the loss never uses stay out of the optimizer (and out of DDP, which insists every trained
        # parameter gets a gradient): the head with λ = 0, the text tower, temperature and image projection
        # without a contrastive term
        if not self.criterion.needs_token_logits:
            self.model.head.requires_grad_(False)
        if not self.criterion.needs_text:
            for param in self.model.contrastive_parameters():
                param.requires_grad_(False)
        self._build_data()
        for folder in (cfg.imagenet_val, cfg.imagenet_v2):  # fail now, not after hours of training
            if folder:
                zero_shot_classes(folder, imagenet_names(folder), get_tokenizer(self.model.config))
        if cfg.val_data and is_shard_pattern(cfg.val_data):
            expand_sources(cfg.val_data)  # a pattern that matches nothing is an error now
        elif cfg.val_data and not Path(cfg.val_data).is_file():
            raise ConfigError(f"--val-data file not found: {cfg.val_data}")
        if cfg.compositional_val:
            # a missing image or a bad item (a negative tokenized as its caption too) is an error now
            compositional_items(cfg.compositional_val, tokenizer=get_tokenizer(self.model.config))

        if self.fsdp:  # before the optimizer: sharding replaces the parameters
            distributed.fsdp_shard(self.model, self.model.transformer_blocks())
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.steps_per_epoch * cfg.epochs, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler() if cfg.precision == "amp" and self.device.type == "cuda" else None
        self.autocast = _autocast(cfg.precision, self.device)
        self.ddp_model = self.model
        if self.world_size > 1 and not self.fsdp:
            self.ddp_model = distributed.wrap_ddp(self.model, self.device, cfg.ddp_static_graph, cfg.use_bn_sync)
        self.compile_seconds: Optional[float] = None  # the first step's time when torch.compile is on
        if cfg.torchcompile and self.fsdp:
            self.ddp_model = torch.compile(self.ddp_model)
        elif cfg.torchcompile:
            compile_towers(self.model)  # in place: the text length cropping stays eager, state-dict keys unchanged

        self._map_loader: Optional[DataLoader] = None
        self.progress = Progress()
        # shards: where each of this rank's data-loader workers stands in the epoch ([round, unit, offset]);
        # DataLoader takes whole batches from its workers in turn, so batch k of the epoch came from worker k % W
        self.n_loader_workers = max(1, cfg.workers)
        self.positions: Dict[int, List[int]] = {}
        self.evals: List[Dict[str, float]] = []
        self.dir = run_dir(cfg)
        self.checkpoints = CheckpointManager(
            self.dir / "checkpoints", self.model, self.optimizer, self.criterion, self.progress,
            {"scheduler": self.scheduler, "scaler": self.scaler}, self._rank_state, self._load_rank_state,
            fsdp=self.fsdp, meta={"train_config": cfg.to_dict(), "world_size": self.world_size})
        self.checkpoints.remove_temporary_files()
        self._saved_step: Optional[int] = None  # the step the newest checkpoint holds
        self._nonfinite_in_row = 0
        path = self.checkpoints.resume(cfg.resume)
        if path is None and cfg.resume == "latest" and distributed.is_main_process():
            log.warning("--resume latest: %s; training starts at step 0", nothing_to_resume(cfg, self._folder_existed))
        if path is not None:
            self._saved_step = self.progress.step
            log.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.progress.step,
                     self.progress.epoch, self.progress.batch_in_epoch)
            if self.checkpoints.changed_settings:
                self._apply_changed_settings(path)

    def _apply_changed_settings(self, path: Path) -> None:
        """The resume rule: the new command line's settings apply (as in open_clip_train, which rebuilds its
        schedule from them), and a notice names each one that differs from the checkpoint's. The optimizer's
        state restored the old hyper-parameters and the scheduler its old base learning rate: both are set from
        this run's config, and the learning rate of the step about to be taken from the new schedule."""
        cfg = self.cfg
        if distributed.is_main_process():
            log.warning("resuming %s at step %d with settings that differ from the checkpoint's (the new ones apply): "
                        "%s", path, self.progress.step, describe_changes(self.checkpoints.changed_settings))
        for group, wd in zip(self.optimizer.param_groups, (cfg.wd, 0.0)):  # param_groups(): decay, no decay
            group.update(weight_decay=wd, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, initial_lr=cfg.lr)
        self.scheduler.base_lrs = [cfg.lr] * len(self.optimizer.param_groups)
        for group, factor in zip(self.optimizer.param_groups, self.scheduler.lr_lambdas):
            group["lr"] = cfg.lr * factor(self.scheduler.last_epoch)

    # --- set-up pieces
    def _build_model(self):
        cfg = self.cfg
        model_cfg = model_config(cfg)
        model = build_model(model_cfg)
        # one read of the checkpoint: weights now, its IDF statistics (if any) for the loss
        stats = load_into(model, resolve_pretrained(cfg.model, cfg.pretrained, cfg.cache_dir)) if cfg.pretrained \
            else None
        apply_locks(model, cfg)
        model.to(self.device)
        # "pure" precisions train the weights themselves in half precision (open_clip's bf16 / fp16)
        self.param_dtype = {"bf16": torch.bfloat16, "pure_bf16": torch.bfloat16, "fp16": torch.float16,
                            "pure_fp16": torch.float16}.get(cfg.precision)
        if self.param_dtype is not None:
            model.to(self.param_dtype)
        if cfg.force_patch_dropout is not None:
            from open_clip.transformer import PatchDropout

            model.visual.patch_dropout = PatchDropout(cfg.force_patch_dropout) if cfg.force_patch_dropout \
                else torch.nn.Identity()
        if cfg.grad_checkpointing:
            model.set_grad_checkpointing(True)
        return model, stats

    def _build_data(self) -> None:
        cfg = self.cfg
        preprocess_train, _ = get_transforms(self.model)
        size = self.model.visual.image_size
        self.dataset = build_train_dataset(cfg, preprocess_train, get_tokenizer(self.model.config),
                                           size if isinstance(size, int) else size[0], self.rank, self.world_size)
        self.step_batch = cfg.batch_size * cfg.accum_freq
        self.streaming = isinstance(self.dataset, IterableDataset)
        if self.streaming:  # shards: an endless stream, the epoch is train_num_samples long (as open_clip)
            self.sampler = None
            self.steps_per_epoch = cfg.train_num_samples // (self.step_batch * self.world_size)
        else:
            self.sampler = ResumableSampler(len(self.dataset), cfg.seed_of_data, self.rank, self.world_size,
                                            with_epoch=True)
            self.steps_per_epoch = self.sampler.per_rank() // self.step_batch
        if self.steps_per_epoch == 0:
            raise ConfigError(f"an epoch of {cfg.train_num_samples or len(self.dataset)} samples is shorter than one "
                              f"step's batch ({self.step_batch} x {self.world_size} processes)")
        self.total_steps = self.steps_per_epoch * cfg.epochs
        if cfg.max_steps:
            self.total_steps = min(self.total_steps, cfg.max_steps)

    # --- per-rank state (the checkpoint manager gathers it from every rank)
    def _rank_state(self) -> Dict[str, Any]:
        return {"rng": rng_state(self.device), "loader_workers": self.n_loader_workers,
                "positions": {int(w): list(pos) for w, pos in self.positions.items()}}

    def _load_rank_state(self, state: Dict[str, Any]) -> None:
        set_rng_state(state["rng"], self.device)
        if state.get("loader_workers") == self.n_loader_workers and "positions" in state:
            self.positions = {int(w): list(pos) for w, pos in state["positions"].items()}
        elif self.streaming and self.progress.batch_in_epoch:
            log.warning("--workers changed since the checkpoint (or it predates shard positions): the shard "
                        "stream restarts this epoch")

    def save(self, *names: str) -> Path:
        """Checkpoint the run as ``names[0]`` (the other names link to it); every rank calls this."""
        if distributed.is_main_process() and getattr(self, "_dir_id", None) is not None:
            check_folder(self.dir, self._dir_id, self.progress.step)  # a write would recreate a deleted folder
        path = self.checkpoints.save(names)
        self._saved_step = self.progress.step
        return path

    # --- the loop
    def _loader(self) -> DataLoader:
        p = self.progress
        if self.streaming:
            self.dataset.stream.set_position(p.epoch, self.positions, p.batch_in_epoch % self.n_loader_workers)
        else:
            self.sampler.set_position(p.epoch, p.batch_in_epoch * self.step_batch)
            if self._map_loader is not None:  # the sampler hands each index out with its epoch: workers go on
                return self._map_loader
        # its own generator: a DataLoader iterator draws its base seed from the generator it is given, which
        # would otherwise be the global one that dropout draws from (a resumed run would draw one more time).
        # A map-style dataset's workers live from epoch to epoch (~0.25 s an epoch here: a fork and its start):
        # a sample's augmentation is seeded by (seed, epoch, index), never by the worker, so nothing changes.
        seed = generator_seed(self.cfg.seed_of_data * 1_000_003 + p.epoch)
        loader = DataLoader(self.dataset, batch_size=self.step_batch, sampler=self.sampler, drop_last=True,
                            num_workers=self.cfg.workers, collate_fn=collate,
                            generator=torch.Generator().manual_seed(seed),
                            worker_init_fn=ignore_stop_signals if self.cfg.workers else None,
                            pin_memory=self.device.type == "cuda",
                            persistent_workers=not self.streaming and self.cfg.workers > 0,
                            prefetch_factor=4 if self.cfg.workers else None)
        if not self.streaming:
            self._map_loader = loader
        return loader

    def _step(self, batch, stop_requested: bool) -> Dict[str, float]:
        images, ids, cls_ids, skipped, position = batch
        images = images.to(self.device, dtype=self.param_dtype, non_blocking=True)
        ids = ids.to(self.device, non_blocking=True)
        if cls_ids is not None:
            cls_ids = cls_ids.to(self.device, non_blocking=True)
        m = train_step(self.ddp_model, self.criterion, self.optimizer, images, ids, self.cfg.accum_freq,
                       self.cfg.grad_clip_norm, self.scaler, self.autocast, cls_ids,
                       counters={"skipped_this_step": skipped, "stop": float(stop_requested)})
        self.scheduler.step()
        p = self.progress
        if position is not None:
            worker, after = position
            self.positions[worker] = after
        p.step += 1
        p.batch_in_epoch += 1
        p.skipped_samples += int(m.pop("skipped_this_step"))
        p.nonfinite_steps += int(m["nonfinite"])
        self._nonfinite_in_row = self._nonfinite_in_row + 1 if m["nonfinite"] else 0
        return m

    def fit(self, on_step: Optional[Callable[[int, Dict[str, float]], None]] = None) -> List[Dict[str, float]]:
        """Train to the end; returns the metrics of the steps this call trained (all ranks' figures).

        SIGINT / SIGTERM (on any rank) stop every rank after the same step, which is saved as
        ``epoch_latest.pt``; then :class:`TrainingInterrupted` is raised."""
        cfg, p = self.cfg, self.progress
        metrics_file = self.dir / "metrics.jsonl"
        if distributed.is_main_process():
            atomic_write_text(dumps(cfg.to_dict(), indent=2) + "\n", self.dir / "config.json")
            trim_metrics(metrics_file, p.step)
        self._dir_id = folder_id(self.dir)
        self.ddp_model.train()
        self.criterion.train()
        reporters = Reporters(cfg.report_to, self.dir, cfg.to_dict(), self.dir.name, cfg.wandb_project_name,
                              cfg.wandb_notes) \
            if distributed.is_main_process() else None
        history: List[Dict[str, float]] = []
        try:
            with StopSignals() as stop:
                while p.step < self.total_steps and p.epoch < cfg.epochs:
                    t_last = time.perf_counter()
                    for batch in self._loader():
                        m = self._step(batch, stop.requested is not None)
                        now = time.perf_counter()
                        m.update(step=p.step, epoch=p.epoch, lr=self.optimizer.param_groups[0]["lr"],
                                 samples_per_s=self.step_batch * self.world_size / max(now - t_last, 1e-9),
                                 skipped_samples=p.skipped_samples)
                        if cfg.torchcompile and self.compile_seconds is None:
                            self.compile_seconds = m["compile_seconds"] = now - t_last
                            log.info("first (compiling) step took %.1f s", self.compile_seconds)
                        t_last = now
                        stopping = m.pop("stop") > 0
                        self._log_step(m, history, metrics_file, reporters, on_step)
                        if stopping:  # a signal on some rank: every rank saves this step and stops
                            path = self.save("epoch_latest.pt")
                            raise TrainingInterrupted(stop.requested or signal.SIGTERM, p.step, path)
                        self._check_nonfinite()
                        self._maybe_evaluate(step_end=True, metrics_file=metrics_file, reporters=reporters)
                        # no checkpoint during a non-finite streak: its weights just gave a non-finite step, and
                        # resuming from them (the guard's advice) would stop again; latest stays the one before
                        if cfg.save_every_n_steps and p.step % cfg.save_every_n_steps == 0 and \
                                not self._nonfinite_in_row:
                            self._save_step()
                        if p.step >= self.total_steps or p.batch_in_epoch >= self.steps_per_epoch:
                            break
                    if p.batch_in_epoch >= self.steps_per_epoch:  # epoch finished
                        p.epoch += 1
                        p.batch_in_epoch = 0
                        self.positions = {}
                        self._maybe_evaluate(step_end=False, metrics_file=metrics_file, reporters=reporters)
                        if cfg.save_frequency and (p.epoch % cfg.save_frequency == 0 or p.epoch == cfg.epochs) \
                                and not self._nonfinite_in_row:
                            self.save(f"epoch_{p.epoch}.pt", "epoch_latest.pt")
                            if cfg.delete_previous_checkpoint:
                                self.checkpoints.delete(f"epoch_{p.epoch - cfg.save_frequency}.pt")
                if self._saved_step != p.step:
                    self.save("epoch_latest.pt")
                if stop.requested is not None:  # the signal came after the last step
                    raise TrainingInterrupted(stop.requested, p.step, self.dir / "checkpoints" / "epoch_latest.pt")
        finally:
            if reporters is not None:
                reporters.close()
            self.close()
        return history

    def _log_step(self, m: Dict[str, float], history: List, metrics_file: Path, reporters, on_step) -> None:
        p = self.progress
        if m["nonfinite"]:
            log.warning("step %d: non-finite loss or gradients, step skipped (weights unchanged)", p.step)
        history.append(m)
        if distributed.is_main_process():
            if p.step % self.cfg.log_every_n_steps == 0 or p.step == self.total_steps or m["nonfinite"]:
                append_metrics(self.dir, self._dir_id, m, p.step)
                reporters.log(m, p.step)
            if on_step:
                on_step(p.step, m)

    def _check_nonfinite(self) -> None:
        limit = self.cfg.max_nonfinite_steps
        if self._nonfinite_in_row >= limit:
            step = self.progress.step
            raise TrainingError(f"{limit} steps in a row (to step {step}) had a non-finite loss or gradient and were "
                                "skipped; the weights and checkpoints are finite, none taken during them. Lower --lr "
                                "(a resume applies it), set --grad-clip-norm or check the data, then continue with "
                                "--resume latest")

    def _maybe_evaluate(self, step_end: bool, metrics_file: Path, reporters) -> None:
        """Zero-shot / validation when their step or epoch frequency comes up, on every rank (each embeds its
        share of the images through the training model; rank 0 logs the gathered result)."""
        cfg, p = self.cfg, self.progress
        if step_end:
            zeroshot = bool(cfg.zeroshot_steps) and p.step % cfg.zeroshot_steps == 0
            val = bool(cfg.val_steps) and p.step % cfg.val_steps == 0
        else:
            zeroshot = bool(cfg.zeroshot_frequency) and p.epoch % cfg.zeroshot_frequency == 0
            val = not cfg.val_steps and bool(cfg.val_frequency) and p.epoch % cfg.val_frequency == 0
        zeroshot = zeroshot and bool(cfg.imagenet_val or cfg.imagenet_v2)
        val = val and bool(cfg.val_data or cfg.compositional_val)
        if not (zeroshot or val):
            return
        m = evaluate_in_training(self.model, cfg, self.device, zeroshot, val)
        m.update(step=p.step, epoch=p.epoch)
        self.evals.append(m)
        if distributed.is_main_process():
            append_metrics(self.dir, self._dir_id, m, p.step)
            reporters.log(m, p.step)
            log.info("evaluation at step %d: %s", p.step, m)

    def _save_step(self) -> None:
        step = self.progress.step
        self.save(f"step_{step}.pt", "epoch_latest.pt")
        if self.cfg.delete_prev_step_ckpt:
            self.checkpoints.delete(f"step_{step - self.cfg.save_every_n_steps}.pt")

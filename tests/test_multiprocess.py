"""N processes train exactly what one process trains: weights and IDF statistics after full optimizer steps."""
import json
import os

import pytest
import torch

import superclip
from superclip.train.trainer import Trainer

from .multiproc import run_ranks
from .test_train import _cfg

STEPS = 5
# per-process batch 8 on 2 processes vs batch 16 on one; the same 80 shuffled synthetic samples, AdamW, λ = 1
VARIANTS = {
    "ddp": dict(batch_size=8),
    "ddp-accum2": dict(batch_size=4, accum_freq=2),
    "fsdp": dict(batch_size=8, fsdp=True),
    "siglip": dict(batch_size=8, contrastive="siglip"),
    "fsdp-accum2": dict(batch_size=4, accum_freq=2, fsdp=True),
    "local-loss": dict(batch_size=8, local_loss=True),
    "class-only": dict(batch_size=8, contrastive="none"),
    "clip-lambda0": dict(batch_size=8, cls_loss_weight=0.0),
    "lit-image": dict(batch_size=8, lock_image=True, lock_image_unlocked_groups=1),
    "lock-text": dict(batch_size=8, lock_text=True),
    "data-seed": dict(batch_size=8, data_seed=7),
}


def _common(tmp_path, name, **kw):
    # AdamW eps 1e-4, not the recipe's 1e-6: the attention key biases have an identically zero gradient (softmax
    # ignores a shift shared by all keys), so their computed gradient is rounding noise (~1e-8) that depends on
    # how the batch is split, and with eps = 1e-6 Adam scales that noise up to ~1e-5 per step. Every other weight
    # agrees to < 1e-5 with eps = 1e-6 as well (measured: key biases 4.5e-5, everything else <= 7e-6).
    kw.setdefault("cls_loss_weight", 1.0)
    return _cfg(tmp_path, name=name, train_num_samples=16 * STEPS, epochs=1, max_steps=STEPS, lr=1e-3, eps=1e-4,
                **kw)


def _train_variants(rank, tmp_path):
    from superclip import distributed

    for name, kw in VARIANTS.items():
        Trainer(_common(tmp_path, f"2proc-{name}", **kw)).fit()
        assert distributed.group_backends() == {"cpu": "gloo"}  # the trainer's own group, for its CPU tensors


def _weights(tmp_path, name):
    ckpt = torch.load(tmp_path / "logs" / name / "checkpoints" / "epoch_latest.pt", weights_only=True)
    return ckpt["model"], ckpt["loss"], ckpt["step"]


@pytest.fixture(scope="module")
def two_process_runs(module_tmp):
    tmp_path = module_tmp("exact")
    run_ranks(_train_variants, tmp_path, timeout=600)
    return tmp_path


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_two_processes_take_the_same_steps_as_one(two_process_runs, variant):
    tmp_path = two_process_runs
    kw = dict(VARIANTS[variant], batch_size=16)
    kw.pop("accum_freq", None)
    Trainer(_common(tmp_path, f"1proc-{variant}", **kw)).fit()
    (w2, s2, step2), (w1, s1, step1) = _weights(tmp_path, f"2proc-{variant}"), _weights(tmp_path, f"1proc-{variant}")
    assert step1 == step2 == STEPS
    assert set(w1) == set(w2)
    worst = max((w2[k].reshape(w1[k].shape).double() - w1[k].double()).abs().max().item() for k in w1)
    assert worst <= 1e-5, f"{variant}: largest weight difference {worst:.3e} after {STEPS} steps"
    for key in ("cap_fq", "num_samples"):
        torch.testing.assert_close(s2[key], s1[key], rtol=0, atol=1e-12)
    assert s1["num_samples"].item() == (0 if variant == "clip-lambda0" else STEPS)


# --- evaluation during training on every rank
EVAL_VARIANTS = {
    "ddp": dict(),
    "fsdp": dict(fsdp=True),
    "ddp-bf16": dict(precision="bf16"),
    "fsdp-bf16": dict(fsdp=True, precision="bf16"),
}


def _write_eval_data(root):
    """An ImageFolder tree of 7 colour classes x 4 images (7 batches of 4: the ranks get 4 and 3, one a
    stand-in) and a retrieval TSV of 18 captioned images."""
    from PIL import Image

    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30),
               "purple": (150, 30, 160), "orange": (240, 140, 20), "white": (240, 240, 240)}
    rows = ["filepath\ttitle"]
    for c, rgb in colours.items():
        (root / "zs" / c).mkdir(parents=True)
        for i in range(4):
            img = Image.new("RGB", (40, 40), rgb)
            img.paste((255 - 40 * i, 255, 255), (4 * i, 4 * i, 4 * i + 12, 4 * i + 12))
            img.save(root / "zs" / c / f"{i}.png")
            if i < 4 and len(rows) <= 18:
                rows.append(f"zs/{c}/{i}.png\ta {c} picture with a small square number {i}")
    (root / "val.tsv").write_text("\n".join(rows) + "\n")
    # hard negatives over 9 of the images (batches of 4, 4, 1: one rank runs a stand-in), two types, 1 or 2 negatives
    names = list(colours)
    items = [{"image": f"zs/{c}/{i}.png", "positive": f"a {c} picture", "type": "colour",
              "negatives": [f"a {names[(k + 1) % 7]} picture"] + ([f"a {names[(k + 3) % 7]} picture"] if i else [])}
             for k, c in enumerate(names[:3]) for i in range(3)]
    items += [{"image": f"zs/{c}/0.png", "positive": f"a {c} picture with a small square number 0", "type": "number",
               "negatives": f"a {c} picture with a small square number 3"} for c in names[:3]]
    (root / "comp.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items))


def _eval_cfg(root, name, **kw):
    return _cfg(root, name=name, imagenet_val=str(root / "zs"), zeroshot_steps=2, val_data=str(root / "val.tsv"),
                compositional_val=str(root / "comp.jsonl"), val_steps=2, save_every_n_steps=2, batch_size=4,
                train_num_samples=32, epochs=1, max_steps=4, **kw)


def _train_with_evaluation(rank, tmp_path):
    from superclip.evaluate.data import image_folder
    from superclip.evaluate.features import Encoder, embed_images

    for name, kw in EVAL_VARIANTS.items():
        trainer = Trainer(_eval_cfg(tmp_path, f"eval-{name}", **kw))
        trainer.fit()
        # the embeddings themselves, dealt over the ranks and gathered, from the final (step 4) weights
        preprocess = superclip.get_transforms(trainer.model)[1]
        paths = image_folder(str(tmp_path / "zs"))[0]
        feats = embed_images(Encoder(trainer.model.eval(), trainer.device, trainer.cfg.precision, split=True),
                             preprocess, paths, batch_size=4)
        if rank == 0:
            torch.save(feats, tmp_path / f"feats-{name}.pt")


@pytest.fixture(scope="module")
def runs_with_evaluation(module_tmp):
    tmp_path = module_tmp("evaluation")
    _write_eval_data(tmp_path)
    run_ranks(_train_with_evaluation, tmp_path, timeout=600)
    return tmp_path


@pytest.mark.parametrize("variant", list(EVAL_VARIANTS))
def test_evaluation_on_every_rank_equals_one_process(runs_with_evaluation, variant):
    """Zero-shot, retrieval and compositional accuracy every 2 steps under DDP / FSDP2, fp32 / pure bf16: the
    logged metrics equal a one-process evaluation of the checkpoint saved at that step."""
    from superclip.evaluate.data import image_folder
    from superclip.evaluate.features import Encoder, embed_images
    from superclip.train.evaluation import evaluate_in_training
    from superclip.train.run_folder import read_metrics

    tmp_path = runs_with_evaluation
    run = tmp_path / "logs" / f"eval-{variant}"
    evals = [m for m in read_metrics(run / "metrics.jsonl") if "imagenet-zeroshot-val-top1" in m]
    assert [m["step"] for m in evals] == [2, 4]
    cfg = _eval_cfg(tmp_path, "unused", **EVAL_VARIANTS[variant])
    for logged in evals:
        model = superclip.create_model(pretrained=str(run / "checkpoints" / f"step_{logged['step']}.pt"),
                                       precision="bf16" if "bf16" in variant else "fp32")
        expected = evaluate_in_training(model, cfg, torch.device("cpu"), zeroshot=True, val=True)
        assert set(expected) == set(logged) - {"step", "epoch"}
        assert {"val/compositional_acc", "val/compositional_colour_acc",
                "val/compositional_number_acc"} <= set(expected)
        for key, value in expected.items():
            assert abs(logged[key] - value) <= 1e-4, (key, logged, value)
    # the gathered embeddings are one process's, row for row
    feats = embed_images(Encoder(model.eval(), "cpu", cfg.precision), superclip.get_transforms(model)[1],
                         image_folder(str(tmp_path / "zs"))[0], batch_size=4)
    torch.testing.assert_close(torch.load(tmp_path / f"feats-{variant}.pt"), feats, rtol=0, atol=1e-6)


# --- per-rank state: RNG and data position
def _mask_recorder(trainer, masks):
    """Records, at each patch-dropout call, the patches it keeps: the top-k of the randn it is about to draw."""
    dropout = trainer.model.visual.patch_dropout

    def hook(module, args):
        x = args[0]
        g = torch.Generator().set_state(torch.get_rng_state())
        keep = max(1, int((x.shape[1] - 1) * (1 - module.prob)))
        masks.append(torch.randn(x.shape[0], x.shape[1] - 1, generator=g).topk(keep, dim=-1).indices)

    dropout.register_forward_pre_hook(hook)


def _resume_with_random_layers(rank, tmp_path, pattern):
    base = dict(dataset_type="webdataset", train_data=pattern, train_num_samples=64, batch_size=4, epochs=1,
                force_patch_dropout=0.5)
    out = {}
    for name, steps, resume in (("straight", 6, None), ("resumed", 3, None), ("resumed", 6, "latest")):
        trainer = Trainer(_cfg(tmp_path, name=name, max_steps=steps, resume=resume, **base))
        masks = []
        _mask_recorder(trainer, masks)
        hist = trainer.fit()
        out.setdefault(name, []).append({"losses": [h["loss"] for h in hist], "masks": masks,
                                         "skipped": [h["skipped_samples"] for h in hist]})
    torch.save(out, tmp_path / f"rank{rank}.pt")


def test_resume_gives_each_rank_its_own_rng_and_data_position(tmp_path):
    from .test_data import write_shards

    (tmp_path / "shards").mkdir()
    # only the second shard holds corrupt samples (1 in 5), so the two ranks' raw positions differ
    pattern = write_shards(tmp_path / "shards", n_shards=2, per_shard=40, corrupt_every=5, corrupt_shards={1})
    run_ranks(_resume_with_random_layers, tmp_path, pattern, timeout=300)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for r in ranks:
        straight, (first, second) = r["straight"][0], r["resumed"]
        assert len(straight["losses"]) == 6 and len(first["losses"]) + len(second["losses"]) == 6
        for a, b in zip(straight["losses"], first["losses"] + second["losses"], strict=True):
            assert abs(a - b) <= 1e-6, (straight["losses"], first["losses"] + second["losses"])
        for a, b in zip(straight["masks"], first["masks"] + second["masks"], strict=True):
            assert torch.equal(a, b)  # the same patch-dropout masks as the uninterrupted run, step for step
    assert ranks[0]["straight"][0]["skipped"][-1] > 0  # corrupt samples were read (and counted over ranks)
    # after the resume each rank draws its own masks
    m0, m1 = ranks[0]["resumed"][1]["masks"][0], ranks[1]["resumed"][1]["masks"][0]
    assert not torch.equal(m0, m1)


# --- collectives and the devices their group serves
def test_process_group_has_a_backend_for_every_device_in_use():
    from superclip import distributed

    assert distributed.backend_config("cpu") == "cpu:gloo"
    # on GPUs: NCCL for CUDA tensors, and gloo for the CPU tensors of object collectives
    assert distributed.backend_config("cuda") == "cpu:gloo,cuda:nccl"


def test_only_distributed_py_touches_torch_distributed():
    """Every collective of ours goes through superclip.distributed, whose helpers check the device."""
    import ast
    from pathlib import Path

    src = Path(superclip.__file__).parent
    offenders = []
    for path in src.rglob("*.py"):
        if path.name == "distributed.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, (ast.Import, ast.ImportFrom)) else []
            module = node.module if isinstance(node, ast.ImportFrom) else None
            if (module or "").startswith("torch.distributed") or any(n.startswith("torch.distributed") for n in names):
                offenders.append(str(path.relative_to(src)))
    assert offenders == []


def _collectives_without_a_backend(rank, result_dir):
    """A group with no backend for CPU tensors (as a NCCL-only group is): every collective of ours refuses a CPU
    tensor with a clear error instead of failing inside the backend or hanging."""
    from superclip import distributed

    torch.distributed.init_process_group("cuda:gloo")
    errors = []
    for call in (lambda: distributed.all_reduce_(torch.ones(2)),
                 lambda: distributed.all_gather_rows(torch.ones(2, 3)),
                 lambda: superclip.SuperCLIPLoss(vocab_size=8).update(torch.tensor([[1, 2, 0]]))):
        try:
            call()
            errors.append(None)
        except RuntimeError as e:
            errors.append(str(e))
    torch.save(errors, os.path.join(result_dir, f"errors{rank}.pt"))


def test_a_collective_on_a_device_without_backend_is_refused(tmp_path):
    run_ranks(_collectives_without_a_backend, str(tmp_path), timeout=120)
    for rank in range(2):
        errors = torch.load(tmp_path / f"errors{rank}.pt")
        assert len(errors) == 3
        for e in errors:
            assert e is not None and "a collective was handed a cpu tensor" in e and "cuda:gloo" in e


# --- leaving the process group
def _threads() -> list:
    return sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))


def _train_fsdp_then_destroy(rank, tmp_path, how):
    from superclip import cli, distributed

    if how == "library":
        Trainer(_cfg(tmp_path, name="destroy", batch_size=4, train_num_samples=16, epochs=1, max_steps=2,
                     fsdp=True)).fit()
        during = _threads()
        distributed.destroy()
    else:  # `superclip train --fsdp`, which leaves the group itself
        model = _cfg(tmp_path).model
        during = None
        assert cli.main(["train", "--model", model, "--dataset-type", "synthetic", "--train-num-samples", "16",
                         "--batch-size", "4", "--epochs", "1", "--logs", str(tmp_path / "logs"), "--name", "cli",
                         "--no-progress", "--fsdp"]) == 0
    torch.save({"during": during, "after": _threads()}, tmp_path / f"threads{rank}.pt")


@pytest.mark.parametrize("how", ["library", "cli"])
def test_destroy_stops_the_groups_threads_after_fsdp(tmp_path, how):
    """After FSDP2 training, DTensor's caches held the device mesh and its gloo groups: their threads ran on after
    ``destroy_process_group`` into interpreter teardown. ``distributed.destroy`` (and ``superclip train``, which
    calls it once its trainer is gone) ends them."""
    run_ranks(_train_fsdp_then_destroy, tmp_path, how, timeout=300)
    for rank in range(2):
        threads = torch.load(tmp_path / f"threads{rank}.pt")
        if threads["during"] is not None:
            assert "pt_gloo_runloop" in threads["during"], threads  # the measurement sees gloo's threads
        assert not [t for t in threads["after"] if "gloo" in t or "tcpstore" in t], threads

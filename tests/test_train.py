import json
import os

import pytest
import torch
from PIL import Image

from superclip import cli
from superclip.config import TrainConfig, load_yaml, make_config
from superclip.train.engine import compute_gradients
from superclip.train.trainer import Trainer

from .conftest import TINY_CFG
from .multiproc import run_ranks


def _cfg(tmp_path, **kw):
    model_path = tmp_path / "tiny.json"
    tmp = tmp_path / f"tiny.json.{os.getpid()}"  # atomic: two spawned ranks may write it at once
    tmp.write_text(json.dumps(TINY_CFG))
    os.replace(tmp, model_path)
    base = dict(model=str(model_path), dataset_type="synthetic", train_num_samples=64, batch_size=8, epochs=2,
                lr=1e-3, warmup=2, logs=str(tmp_path / "logs"), name="run", log_every_n_steps=1, progress=False)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("schedule", [{}, {"lr_scheduler": "const-cooldown", "epochs_cooldown": 1,
                                           "lr_cooldown_end": 1e-4, "lr_cooldown_power": 2.0}, {"data_seed": 5}],
                         ids=["cosine", "const-cooldown", "data-seed"])
@pytest.mark.arithmetic
def test_resume_continues_exactly(tmp_path, schedule):
    straight = Trainer(_cfg(tmp_path, name="straight", **schedule)).fit()
    first = Trainer(_cfg(tmp_path, name="resumed", max_steps=5, **schedule)).fit()
    assert len(first) == 5
    second = Trainer(_cfg(tmp_path, name="resumed", resume="latest", **schedule)).fit()
    resumed = first + second
    assert [h["step"] for h in resumed] == [h["step"] for h in straight] == list(range(1, 17))
    assert straight[-1]["lr"] < straight[7]["lr"] / 2  # the schedule decays in the second epoch
    for a, b in zip(straight, resumed):
        for key in ("loss", "contrastive_loss", "class_loss", "lr"):
            assert abs(a[key] - b[key]) <= 1e-6, (a["step"], key, a[key], b[key])
    ckpt_dir = tmp_path / "logs" / "resumed" / "checkpoints"
    assert {"epoch_1.pt", "epoch_2.pt", "epoch_latest.pt", "epoch_latest.pt.json"} <= set(os.listdir(ckpt_dir))
    meta = json.loads((ckpt_dir / "epoch_latest.pt.json").read_text())
    assert meta["step"] == 16 and meta["epoch"] == 2


@pytest.mark.arithmetic
def test_accumulation_matches_one_big_batch(tmp_path):
    trainer = Trainer(_cfg(tmp_path, batch_size=8))
    model, criterion = trainer.model, trainer.criterion
    images, ids, _, _, _ = next(iter(trainer._loader()))
    state = {k: v.clone() for k, v in criterion.state_dict().items()}
    grads = []
    for accum in (1, 2):
        criterion.load_state_dict(state)
        model.zero_grad(set_to_none=True)
        losses = compute_gradients(model, criterion, images, ids, accum_freq=accum)
        grads.append(({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, losses))
    (g1, l1), (g2, l2) = grads
    assert set(g1) == set(g2)
    assert abs(l1["loss"].item() - l2["loss"].item()) < 1e-5
    for name in g1:
        torch.testing.assert_close(g2[name], g1[name], rtol=1e-4, atol=1e-6, msg=name)


def _fsdp_worker(rank, tmp_path):
    straight = Trainer(_cfg(tmp_path, batch_size=4, max_steps=3, name="fsdp", fsdp=True)).fit()
    first = Trainer(_cfg(tmp_path, batch_size=4, max_steps=2, name="fsdp-resumed", fsdp=True)).fit()
    resumed = Trainer(_cfg(tmp_path, batch_size=4, max_steps=3, name="fsdp-resumed", fsdp=True,
                           resume="latest")).fit()
    if rank == 0:
        torch.save({"straight": straight, "resumed": first + resumed}, os.path.join(tmp_path, "fsdp.pt"))


def test_two_process_fsdp2_matches_single_process_and_resumes(tmp_path):
    run_ranks(_fsdp_worker, tmp_path)
    runs = torch.load(tmp_path / "fsdp.pt")
    single = Trainer(_cfg(tmp_path, batch_size=8, max_steps=1, name="single")).fit()
    for key in ("loss", "contrastive_loss", "class_loss"):
        assert abs(runs["straight"][0][key] - single[0][key]) < 1e-5, key
    assert len(runs["resumed"]) == 3
    for a, b in zip(runs["straight"], runs["resumed"]):
        assert abs(a["loss"] - b["loss"]) < 1e-6, a["step"]
    ckpt = torch.load(tmp_path / "logs" / "fsdp" / "checkpoints" / "epoch_latest.pt", weights_only=True)
    assert ckpt["model"]["clip.logit_scale"].shape == (1,)  # whole tensors, not shards
    assert ckpt["model"]["head.fc.weight"].shape == (49408, 64)


def test_corrupt_images_are_skipped_and_counted(tmp_path):
    rows = ["filepath\ttitle"]
    for i in range(16):
        path = tmp_path / f"img{i}.png"
        if i % 4 == 3:
            path.write_bytes(b"this is not a png")
        else:
            Image.new("RGB", (40, 40), (i * 10, 0, 0)).save(path)
        rows.append(f"{path.name}\ta red square number {i}")
    (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n")
    cfg = _cfg(tmp_path, dataset_type="auto", train_data=str(tmp_path / "train.tsv"), train_num_samples=None,
               epochs=1)
    hist = Trainer(cfg).fit()
    assert len(hist) == 2 and hist[-1]["skipped_samples"] == 4


def test_released_yaml_maps_onto_config(tmp_path):
    yaml_text = """save_frequency: 1
name: "superclip_vit_b16_s512m_bs16k"
train_data: '/datasets/datacomp_1b/data/{00000..128000}.tar'
train_num_samples: 512_000_000
dataset_type: webdataset
precision: 'amp_bfloat16'
warmup: 500
global_batch_size: 16384
batch_size: 0
epochs: 1
lr: 1e-3
beta1: 0.9
beta2: 0.98
eps: 1.0e-6
workers: 1
model: "SuperCLIP-ViT-B-16"
seed: 0
ddp_static_graph: true
local_loss: true
gather_with_grad: true
force_image_size: 224
grad_checkpointing: true
logs: './logs'
imagenet_val: "/imagenet/val"
report_to: "wandb"
log_every_n_steps: 128
zeroshot_steps: 6104
val_steps: 6104
save_every_n_steps: 6104
delete_prev_step_ckpt: true
resume: latest
"""
    path = tmp_path / "superclip_vit_b16_s512m_bs16k.yaml"
    path.write_text(yaml_text)
    cfg = make_config(load_yaml(str(path)), {"train_data": "/mine/{0..9}.tar"})
    assert cfg.train_data == "/mine/{0..9}.tar" and cfg.train_num_samples == 512_000_000
    assert cfg.lr == 1e-3 and cfg.eps == 1e-6 and cfg.precision == "amp_bf16" and cfg.global_batch_size == 16384
    assert cfg.local_loss and cfg.gather_with_grad and cfg.grad_checkpointing and cfg.resume == "latest"
    assert cfg.model == "SuperCLIP-ViT-B-16" and cfg.save_every_n_steps == 6104


def _train_error(capsys, argv):
    assert cli.main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    return err


def test_train_user_errors(tmp_path, capsys):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("learning_rate: 0.1\n")
    assert "unknown key 'learning_rate'" in _train_error(capsys, ["--config", str(bad_yaml)])
    assert "--precision must be one of" in _train_error(capsys, ["--precision", "fp8"])
    assert "CSV file not found" in _train_error(capsys, ["--train-data", str(tmp_path / "none.csv")])
    (tmp_path / "t.csv").write_text("path,caption\na.png,hello\n")
    err = _train_error(capsys, ["--train-data", str(tmp_path / "t.csv"), "--csv-separator", ","])
    assert "no column 'filepath' (--csv-img-key)" in err
    assert "--resume checkpoint not found" in _train_error(
        capsys, ["--dataset-type", "synthetic", "--resume", str(tmp_path / "nope.pt"), "--logs", str(tmp_path)])


def test_tensorboard_reporting_and_unknown_backend(tmp_path, capsys):
    Trainer(_cfg(tmp_path, name="tb", report_to="tensorboard", max_steps=2)).fit()
    events = list((tmp_path / "logs" / "tb" / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 100
    assert "unknown backend 'mlflow'" in _train_error(
        capsys, ["--dataset-type", "synthetic", "--report-to", "mlflow", "--logs", str(tmp_path)])


def test_pure_bf16_force_image_size_and_step_checkpoints(tmp_path):
    t = Trainer(_cfg(tmp_path, name="bf16", precision="bf16", force_image_size=48, max_steps=4,
                     save_every_n_steps=2, delete_prev_step_ckpt=True))
    hist = t.fit()
    assert t.model.head.fc.weight.dtype == torch.bfloat16 and t.model.visual.image_size == (48, 48)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in hist)
    names = set(os.listdir(tmp_path / "logs" / "bf16" / "checkpoints"))
    assert "step_4.pt" in names and "step_2.pt" not in names and "epoch_latest.pt" in names


def test_train_cli_end_to_end_writes_plot_and_metrics(tmp_path, capsys):
    model_path = tmp_path / "tiny.json"
    model_path.write_text(json.dumps(TINY_CFG))
    assert cli.main(["train", "--dataset-type", "synthetic", "--train-num-samples", "32", "--batch-size", "8",
                     "--model", str(model_path), "--logs", str(tmp_path), "--name", "cli", "--no-progress",
                     "--log-every-n-steps", "1"]) == 0
    assert "trained 4 steps" in capsys.readouterr().out
    run = tmp_path / "cli"
    assert (run / "loss.png").stat().st_size > 10_000
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 4
    assert json.loads((run / "config.json").read_text())["batch_size"] == 8


def test_pretrained_official_checkpoint_continues_its_statistics(tmp_path):
    from .test_weights import _official_checkpoint

    path, cfg_path, sd, ref = _official_checkpoint(TINY_CFG, tmp_path)
    t = Trainer(_cfg(tmp_path, model=str(cfg_path), pretrained=str(path), name="ft"))
    assert torch.equal(t.model.head.fc.weight, sd["module.text_decoder.text_projection.weight"])
    assert t.criterion.num_samples.item() == ref.n
    assert torch.equal(t.criterion.cap_fq, sd["module.cap_fq"])


def test_optimizer_is_fused_adamw_with_clip_groups_and_matches_reference_loop():
    """The trainer's AdamW (fused kernel, also on CPU) takes the same steps as torch's per-tensor reference
    loop with open_clip_train's groups: decay on matrices only."""
    from superclip.train.optim import build_optimizer

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 300))
    ref = [p.detach().clone().requires_grad_() for p in model.parameters()]
    cfg = TrainConfig(lr=1e-2, wd=0.2)
    opt = build_optimizer(model, cfg)
    assert all(g["fused"] for g in opt.param_groups)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.2, 0.0]
    assert [p.ndim for p in opt.param_groups[0]["params"]] == [2, 2]
    ref_opt = torch.optim.AdamW([{"params": [p for p in ref if p.ndim == 2], "weight_decay": 0.2},
                                 {"params": [p for p in ref if p.ndim < 2], "weight_decay": 0.0}],
                                lr=1e-2, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, foreach=False)
    for _ in range(5):
        grads = [torch.randn_like(p) for p in ref]
        for p, q, g in zip(model.parameters(), ref, grads):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref_opt.step()
    for p, q in zip(model.parameters(), ref):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.arithmetic
def test_torchcompile_trains_like_eager_and_reports_compile_time(tmp_path):
    """--torchcompile compiles the towers and head in place: same losses as eager (to float rounding), the
    first step's time recorded, and checkpoints with the eager model's keys."""
    eager = Trainer(_cfg(tmp_path, name="eager", epochs=1, train_num_samples=32)).fit()
    trainer = Trainer(_cfg(tmp_path, name="compiled", epochs=1, train_num_samples=32, torchcompile=True))
    compiled = trainer.fit()
    for a, b in zip(eager, compiled, strict=True):
        for key in ("loss", "contrastive_loss", "class_loss"):
            assert abs(a[key] - b[key]) <= 1e-4 * max(1.0, abs(a[key])), (a["step"], key, a[key], b[key])
    assert trainer.compile_seconds is not None and "compile_seconds" in compiled[0]
    state = torch.load(tmp_path / "logs" / "compiled" / "checkpoints" / "epoch_latest.pt", weights_only=True)
    assert set(state["model"]) == set(Trainer(_cfg(tmp_path, name="keys")).model.state_dict())


def test_data_seed_varies_the_data_alone(tmp_path):
    """--data-seed: the data (synthetic samples, order, caption choice) follows it, the initial weights --seed."""
    def first_batch_and_weights(**kw):
        trainer = Trainer(_cfg(tmp_path, name="-".join(f"{k}{v}" for k, v in kw.items()), **kw))
        images, texts = next(iter(trainer._loader()))[:2]
        return images, texts, {k: v.clone() for k, v in trainer.model.state_dict().items()}

    split = first_batch_and_weights(seed=0, data_seed=1)
    data_of_1 = first_batch_and_weights(seed=1)
    weights_of_0 = first_batch_and_weights(seed=0)
    assert torch.equal(split[0], data_of_1[0]) and torch.equal(split[1], data_of_1[1])
    assert not torch.equal(split[0], weights_of_0[0])
    assert all(torch.equal(split[2][k], weights_of_0[2][k]) for k in split[2])
    assert not torch.equal(split[2]["clip.visual.conv1.weight"], data_of_1[2]["clip.visual.conv1.weight"])
    assert TrainConfig(data_seed=None, seed=3).seed_of_data == 3


def test_loader_workers_live_across_epochs_and_each_sample_follows_its_epoch(tmp_path, monkeypatch):
    """A map-style dataset's loader workers now live from epoch to epoch (no fork and start each epoch). Each
    sample's augmentation must still be drawn for its epoch: every step's images equal a batch built here from
    (epoch, index) by hand, for the in-process loader and for a worker alike (before persistent workers, the epoch
    reached a worker only because it was forked anew); and a run stopped in its second epoch resumes equal."""
    import numpy as np

    import superclip.train.trainer as trainer_module
    from superclip.data.loader import ResumableSampler

    rng = np.random.default_rng(0)  # 48 px images for a 32 px model: the random crops differ from draw to draw
    lines = ["filepath\ttitle"]
    for i in range(64):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        lines.append(f"{i}.png\ta picture number {i % 7}")
    (tmp_path / "train.tsv").write_text("\n".join(lines) + "\n")
    data = dict(dataset_type="csv", train_data=str(tmp_path / "train.tsv"))
    seen, real = {}, trainer_module.Trainer._step

    def capture(run):
        def step(self, batch, stop):
            seen.setdefault(run, []).append(batch[0].clone())
            return real(self, batch, stop)
        monkeypatch.setattr(trainer_module.Trainer, "_step", step)

    histories = {}
    for run, kw in (("inline", {"workers": 0}), ("worker", {"workers": 1}), ("cut", {"workers": 1, "max_steps": 11})):
        capture(run)
        histories[run] = Trainer(_cfg(tmp_path, name=run, **data, **kw)).fit()
    capture("cut")
    resumed = Trainer(_cfg(tmp_path, name="cut", workers=1, resume="latest", **data))
    histories["cut"] += resumed.fit()
    dataset, sampler = resumed.dataset, ResumableSampler(len(resumed.dataset), resumed.cfg.seed_of_data)
    expected = []
    for epoch in (0, 1):
        sampler.set_position(epoch, 0)
        order = list(sampler)
        for s in range(8):
            expected.append(torch.stack([dataset[(epoch, i)][0] for i in order[8 * s:8 * s + 8]]))
    assert not torch.equal(dataset[(0, order[0])][0], dataset[(1, order[0])][0])  # crops are drawn per epoch
    for run in ("inline", "worker", "cut"):
        assert len(seen[run]) == 16 and all(torch.equal(a, b) for a, b in zip(seen[run], expected)), run
    for a, b in zip(histories["worker"], histories["cut"], strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-6, a["step"]

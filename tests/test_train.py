"""Training pieces in-process on CPU: config validation, optimizer split, schedule, DeepSpeed config, MFU, checkpoint
publication, the skip-on-non-finite gate (DeepSpeed world of one, gloo), and the CLI's one-line errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from procs import repo_env
from torch import nn

from tnl import checkpoint_format
from tnl.checkpoint_format import no_decay, param_groups
from tnl.config import ConfigError, compose
from tnl.train import checkpoint, dist
from tnl.train.metrics import PEAK_FLOPS_BF16, mfu, peak_flops, truncate_after
from tnl.train.optim import WarmupCosine, deepspeed_config

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = repo_env()
    return subprocess.run([sys.executable, str(REPO / "scripts/train.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


# -- config ---------------------------------------------------------------------------------------------------------
def test_compose_defaults_and_overrides():
    cfg = compose(["model=llama_tiny", "deepspeed=zero3", "trainer.max_steps=7", "optim.lr=1e-3", "seed=5",
                   "trainer.stop_at_step=3"])
    assert cfg.model.arch == "llama" and cfg.deepspeed.stage == 3 and cfg.trainer.max_steps == 7
    assert cfg.optim.lr == 1e-3 and cfg.seed == 5 and cfg.trainer.stop_at_step == 3
    assert compose([]).deepspeed.stage == 2


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "configs" / "experiment").glob("*.yaml")))
def test_experiments_compose(name):
    cfg = compose([f"experiment={name}"])
    assert cfg.run_dir.startswith("runs/") and cfg.model.arch in ("tnl", "llama")
    if name.endswith("_h100"):
        assert cfg.trainer.seq_len == 2048 and cfg.deepspeed.stage == 2 and cfg.deepspeed.precision == "bf16"
    if name == "llama_385m_h100":
        assert cfg.model.arch == "llama" and cfg.optim.lr == compose(["experiment=tnl_385m_h100"]).optim.lr


@pytest.mark.parametrize("override, needle", [
    ("trainer.max_stepz=3", "trainer.max_stepz"),
    ("+trainer.foo=1", "'foo' not in 'TrainerConfig'"),
    ("trainer.max_steps=abc", "trainer.max_steps"),
    ("model=no_such_model", "model/no_such_model"),
    ("deepspeed=zero9", "deepspeed/zero9"),
    ("deepspeed.stage=5", "deepspeed.stage"),
    ("trainer.seq_len=0", "trainer.seq_len"),
    ("deepspeed.precision=fp8", "deepspeed.precision"),
    ("logger.name=mlflow", "logger.name"),
    ("trainer.compile=tensorrt", "trainer.compile"),
    ("trainer.fused_loss=yes", "trainer.fused_loss must be auto, on or off"),
    ("kernels.backend=cuda", "kernels.backend must be auto, triton or torch"),
    ("kernels.la2_algo=fast", "kernels.la2_algo must be auto, chunk or fused"),
    ("model.hidden_sise=32", "model.hidden_sise"),
    ("+model.hidden_sise=32", "'hidden_sise' not in 'ModelConfig'"),
    ("model.num_hidden_layers=two", "model.num_hidden_layers"),
])
def test_bad_override_is_one_clear_line(override, needle):
    with pytest.raises(ConfigError) as err:
        compose([override])
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_cli_error_is_one_line_no_traceback():
    r = run_cli("trainer.max_stepz=3", timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr


def test_dry_run_15b_prints_parameters_without_allocating(tmp_path):
    from tnl.models import count_parameters

    t0 = time.perf_counter()
    r = run_cli("model=tnl_15b", "trainer.dry_run=true", f"run_dir={tmp_path / 'run'}", "--local_rank=0",
                timeout=120)
    elapsed = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    expected = count_parameters(dict(compose(["model=tnl_15b"]).model))
    assert lines[0] == f"parameters={expected}" and 14.5e9 < expected < 15.2e9
    assert "hidden_size: 5120" in r.stdout and "run_dir:" in r.stdout
    assert not (tmp_path / "run").exists()  # nothing written, no data prepared
    assert elapsed < 60


def test_strip_launcher_args():
    argv = ["--local_rank=1", "model=tnl_tiny", "--local-rank", "3", "trainer.max_steps=2"]
    assert dist.strip_launcher_args(argv) == ["model=tnl_tiny", "trainer.max_steps=2"]


# -- optimizer, schedule, DeepSpeed config -----------------------------------------------------------------------------
def test_no_weight_decay_split():
    model = nn.ModuleDict({"embed_tokens": nn.Embedding(10, 4), "proj": nn.Linear(4, 4), "norm": nn.LayerNorm(4)})
    model.register_parameter("lrpe_theta", nn.Parameter(torch.zeros(2, 2)))
    names = {n for n, p in model.named_parameters() if no_decay(n, p)}
    assert names == {"embed_tokens.weight", "proj.bias", "norm.weight", "norm.bias", "lrpe_theta"}
    groups = param_groups(model.named_parameters(), 0.1)
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert [p.shape for p in groups[0]["params"]] == [torch.Size([4, 4])]


def test_warmup_cosine():
    s = WarmupCosine(lr=1.0, warmup_steps=4, max_steps=14, min_lr_ratio=0.1)
    assert [s.lr_at(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert s.lr_at(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert s.lr_at(14) == pytest.approx(0.1) and s.lr_at(100) == pytest.approx(0.1)
    lrs = [s.lr_at(i) for i in range(4, 15)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_deepspeed_config(stage):
    cfg = compose([f"deepspeed=zero{stage}", "trainer.micro_batch_size=3", "trainer.grad_accum=5"])
    ds = deepspeed_config(cfg, world_size=4, precision="bf16")
    assert ds["train_batch_size"] == 3 * 5 * 4 and ds["train_micro_batch_size_per_gpu"] == 3
    assert ds["gradient_accumulation_steps"] == 5 and ds["zero_optimization"]["stage"] == stage
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"] and ds["gradient_clipping"] == 1.0
    off = deepspeed_config(compose(["deepspeed=zero3_offload"]), 1, "fp32")["zero_optimization"]
    assert off["offload_optimizer"]["device"] == "cpu" and off["offload_param"]["device"] == "cpu"


def test_mfu_and_peak_table():
    assert peak_flops(torch.device("cpu"), None) is None
    assert peak_flops(torch.device("cpu"), 1e12) == 1e12
    assert dict(PEAK_FLOPS_BF16)["H100"] == 989e12 and dict(PEAK_FLOPS_BF16)["A100"] == 312e12
    assert mfu(6e9, 1e4, 1e14, 2) == pytest.approx(6e9 * 1e4 / 2e14)
    assert mfu(6e9, 1e4, None, 2) is None


# -- checkpoint bookkeeping -----------------------------------------------------------------------------------------
def test_latest_tag_ignores_partial_and_falls_back(tmp_path):
    for step in (2, 4):
        (tmp_path / checkpoint_format.tag_for(step)).mkdir()
        (tmp_path / checkpoint_format.tag_for(step) / "meta.json").write_text("{}")
    (tmp_path / checkpoint_format.tag_for(6)).mkdir()  # no meta.json: incomplete
    (tmp_path / ".tmp_step_00000008").mkdir()
    assert checkpoint_format.latest_tag(tmp_path) == "step_00000004"
    (tmp_path / "latest").write_text("step_00000002")
    assert checkpoint_format.latest_tag(tmp_path) == "step_00000002"
    (tmp_path / "latest").write_text("step_00000006")  # pointer to an incomplete dir: newest complete instead
    assert checkpoint_format.latest_tag(tmp_path) == "step_00000004"
    checkpoint.clean_partial(tmp_path)
    assert not (tmp_path / ".tmp_step_00000008").exists()


def test_check_compatible_names_the_difference(tmp_path):
    meta = {"model": {"arch": "tnl", "hidden_size": 64}, "world_size": 2, "zero_stage": 2}
    checkpoint.check_compatible(meta, {"arch": "tnl", "hidden_size": 64}, 2, 2, tmp_path)
    with pytest.raises(checkpoint.CheckpointError, match=r"different model config \(hidden_size: 64 -> 32\)"):
        checkpoint.check_compatible(meta, {"arch": "tnl", "hidden_size": 32}, 2, 2, tmp_path)
    with pytest.raises(checkpoint.CheckpointError, match="written by 2 ranks"):
        checkpoint.check_compatible(meta, meta["model"], 1, 2, tmp_path)
    with pytest.raises(checkpoint.CheckpointError, match="deepspeed.stage=2"):
        checkpoint.check_compatible(meta, meta["model"], 2, 3, tmp_path)


def test_truncate_metrics_after_resume_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 7)) + "{broken\n")
    truncate_after(path, 4)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3, 4]


# -- the non-finite gate, through a real DeepSpeed engine (world of one) ---------------------------------------------
class _NanGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


class FakeLM(nn.Module):
    """Stand-in with the tnl.models interface; poisons the loss or the gradient on chosen forward calls."""

    def __init__(self, vocab=32, dim=8):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.proj = nn.Linear(dim, vocab)
        self.calls, self.nan_loss, self.nan_grad = 0, set(), set()

    def forward(self, input_ids, targets=None, cu_seqlens=None):
        self.calls += 1
        h = self.embed(input_ids)
        if self.calls in self.nan_grad:
            h = _NanGrad.apply(h)
        logits = self.proj(h).float()
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        if self.calls in self.nan_loss:
            loss = loss * float("nan")
        return SimpleNamespace(loss=loss, logits=logits)

    def flops_per_token(self, seq_len):
        return 6.0 * sum(p.numel() for p in self.parameters())


class FakeLoader:
    def __init__(self, batch=2, seq=8, vocab=32):
        self.g = torch.Generator().manual_seed(0)
        self.shape, self.vocab = (batch, seq + 1), vocab

    def __iter__(self):
        while True:
            x = torch.randint(0, self.vocab, self.shape, generator=self.g)
            yield {"input_ids": x[:, :-1], "targets": x[:, 1:]}

    def state_dict(self):
        return {}


@pytest.fixture(scope="module")
def process_group():
    keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    saved = {k: os.environ.get(k) for k in keys}
    dist.init("cpu")
    yield
    dist.destroy()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def make_trainer(stage: int, max_bad: int = 3):
    import deepspeed

    from tnl.train.optim import build_optimizer
    from tnl.train.trainer import StepGate, Trainer

    cfg = compose([f"deepspeed=zero{stage}", "deepspeed.precision=fp32", "trainer.micro_batch_size=2",
                   "trainer.seq_len=8", "trainer.eval_every=0", f"trainer.max_bad_steps={max_bad}",
                   "optim.warmup_steps=0", "optim.lr=1e-2", "trainer.max_steps=20"])
    torch.manual_seed(0)
    model = FakeLM()
    opt = build_optimizer(model, cfg.optim, "cpu", cpu_offload=False)
    gate = StepGate(opt, torch.device("cpu"))
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=deepspeed_config(cfg, 1, "fp32"),
                                      dist_init_required=False)
    trainer = Trainer(engine=engine, gate=gate, schedule=WarmupCosine(1e-2, 0, 20, 0.1), train_loader=FakeLoader(),
                      make_val_loader=None, cfg=cfg.trainer, device=torch.device("cpu"), world_size=1,
                      flops_per_token=1.0, peak_flops=None)
    return trainer, model


def _weights(engine) -> list[torch.Tensor]:
    import deepspeed

    params = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params) if hasattr(params[0], "ds_id") else _null():
        return [p.detach().clone() for p in params]


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("stage", [0, 2, 3])
@pytest.mark.parametrize("poison", ["nan_loss", "nan_grad"])
def test_non_finite_step_is_skipped_then_k_in_a_row_abort(process_group, stage, poison):
    from tnl.train.trainer import NonFiniteError

    trainer, model = make_trainer(stage)
    getattr(model, poison).add(3)
    for _ in range(2):
        assert trainer.train_step()["skipped"] == 0
    before = _weights(trainer.engine)
    rec = trainer.train_step()  # step 3: poisoned, must not move the weights
    assert rec["skipped"] == 1 and trainer.state.skipped == 1
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(trainer.engine)))
    rec = trainer.train_step()  # step 4: clean again, applied
    assert rec["skipped"] == 1 and math.isfinite(rec["loss"]) and trainer.state.bad_in_a_row == 0
    assert not all(torch.equal(a, b) for a, b in zip(before, _weights(trainer.engine)))
    getattr(model, poison).update({5, 6, 7})
    trainer.train_step()
    trainer.train_step()
    with pytest.raises(NonFiniteError, match="3 steps in a row"):
        trainer.train_step()


def test_gate_judges_gradients_by_the_clip_norm_when_given():
    """With a norm source the gate trusts the norm (DeepSpeed's -1 / inf / NaN mark a bad step) and reads no
    gradient; without one it checks every gradient tensor."""
    from tnl.train.trainer import StepGate

    for norm, grad, applied in ((1.0, float("nan"), True), (-1.0, 1.0, False), (float("inf"), 1.0, False),
                                (float("nan"), 1.0, False), (None, float("nan"), False), (None, 1.0, True)):
        p = nn.Parameter(torch.zeros(3))
        opt = torch.optim.SGD([p], lr=1.0)
        gate = StepGate(opt, torch.device("cpu"), grad_norm=lambda n=norm: None if n is None else torch.tensor(n))
        gate.losses = torch.tensor([0.5])
        p.grad = torch.full((3,), grad)
        opt.step()
        assert gate.vetoed is not applied, (norm, grad)
        assert bool((p != 0).any()) is applied, (norm, grad)


@pytest.mark.parametrize("stage,has_norm", [(0, False), (2, True), (3, False)])
def test_trainer_gives_the_gate_zero_clip_norm(process_group, stage, has_norm):
    trainer, _ = make_trainer(stage)
    assert (trainer.gate.grad_norm is not None) is has_norm
    trainer.train_step()
    if has_norm:
        assert isinstance(trainer.gate.grad_norm(), torch.Tensor)


def test_optional_loggers_write_files(tmp_path):
    from tnl.train.metrics import build_sinks

    record = {"step": 1, "tokens": 64, "loss": 2.5, "lr": 1e-3, "grad_norm": 0.5, "tokens_per_s": 10.0, "mfu": None}
    for name in ("tensorboard", "wandb"):
        cfg = compose([f"logger={name}", f"run_dir={tmp_path}", "trainer.progress=log"])
        sinks = build_sinks(tmp_path, cfg, 0, {"seed": 1})
        for sink in sinks:
            sink.on_log(1, record)
        for sink in sinks:
            sink.close()
    assert any((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert any((tmp_path / "wandb").glob("offline-run-*")) and (tmp_path / "wandb_id.txt").is_file()
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["loss"] == 2.5


def test_export_cli_errors(tmp_path, capsys):
    from tnl.train.export import cli

    assert cli([f"run_dir={tmp_path}"]) == 1
    assert "no complete checkpoint" in capsys.readouterr().err
    assert cli(["bogus"]) == 2
    assert "expected run_dir=PATH" in capsys.readouterr().err


def test_compile_refused_under_zero3():
    from tnl.train.engine import compile_blocks

    with pytest.raises(ConfigError, match="ZeRO-3"):
        compile_blocks(nn.Module(), "eager", 3)

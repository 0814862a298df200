"""GPU checks of the models (run with `make test-gpu`): the Triton path inside TNL matches the torch path, bf16
training steps are finite, LLaMA packed attention, and recurrent generate == full recompute on CUDA."""

import pytest
import torch

from tnl import ops
from tnl.models import build_model

pytestmark = pytest.mark.gpu


def cfg(arch, **kw):
    c = dict(arch=arch, vocab_size=512, hidden_size=256, num_hidden_layers=3, num_attention_heads=4,
             intermediate_size=512)
    c.update(kw)
    return c


@pytest.mark.parametrize("kw", [{}, {"gate_rank": 16}])
def test_tnl_triton_path_matches_torch_path(kw, monkeypatch):
    torch.manual_seed(0)
    model = build_model(cfg("tnl", **kw), device="cuda")
    ids = torch.randint(0, 512, (1, 700), device="cuda")
    tg = torch.randint(0, 512, (1, 700), device="cuda")
    cu = torch.tensor([0, 100, 357, 700], dtype=torch.int32, device="cuda")
    grads = {}
    for backend in ("triton", "torch"):
        ops.configure(backend=backend)  # restored by conftest's kernel_settings
        model.zero_grad()
        loss = model(ids, tg, cu_seqlens=cu).loss
        loss.backward()
        grads[backend] = (loss.item(), [p.grad.clone() for p in model.parameters()])
    assert grads["triton"][0] == pytest.approx(grads["torch"][0], rel=1e-4)
    for a, b in zip(grads["triton"][1], grads["torch"][1]):
        assert torch.allclose(a, b, rtol=1e-2, atol=1e-2 * b.abs().max().item() + 1e-8)


@pytest.mark.parametrize("arch", ["tnl", "llama"])
def test_bf16_autocast_step_is_finite(arch):
    torch.manual_seed(1)
    model = build_model(cfg(arch, gradient_checkpointing=True), device="cuda")
    ids = torch.randint(0, 512, (2, 1024), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(ids, ids.roll(-1, 1)).loss
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert loss.item() == pytest.approx(torch.log(torch.tensor(512.0)).item(), rel=0.05)


def test_llama_packed_equals_separate_on_cuda():
    torch.manual_seed(2)
    model = build_model(cfg("llama"), device="cuda").to(torch.bfloat16).eval()
    ids = torch.randint(0, 512, (1, 300), device="cuda")
    cu = torch.tensor([0, 120, 121, 300], dtype=torch.int32, device="cuda")
    with torch.no_grad():
        packed = model(ids, cu_seqlens=cu).logits.float()
        parts = torch.cat([model(ids[:, s:e]).logits for s, e in ((0, 120), (120, 121), (121, 300))], 1).float()
    assert torch.allclose(packed, parts, atol=3e-2, rtol=3e-2)
    # and the backward through the varlen kernel: packed loss grads == grads of the token-weighted separate losses
    model = model.float().train()
    tg = torch.randint(0, 512, (1, 300), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        model(ids, tg, cu_seqlens=cu).loss.backward()
    g_packed = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        docs = ((0, 120), (120, 121), (121, 300))
        sum(model(ids[:, s:e], tg[:, s:e]).loss * (e - s) / 300 for s, e in docs).backward()
    for a, b in zip(g_packed, (p.grad for p in model.parameters())):
        assert torch.allclose(a, b, atol=2e-2 * b.abs().max().item() + 1e-6, rtol=5e-2)


def test_recurrent_generate_matches_full_recompute_on_cuda():
    """Tokens from prefill (Triton) + recurrent steps are greedy under a full recompute of the final sequence
    (up to kernel rounding: the chosen logit is within 1e-2 of the max)."""
    from tnl.hf import TnlForCausalLM
    from tnl.hf.export import tnl_config_from_args

    torch.manual_seed(3)
    core = build_model(cfg("tnl"))
    hf = TnlForCausalLM(tnl_config_from_args(core.args))
    hf.load_state_dict(core.state_dict())
    hf = hf.cuda().eval()
    ids = torch.randint(0, 512, (2, 300), device="cuda")
    with torch.no_grad():
        out = hf.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=0, eos_token_id=None)
        logits = hf(out, use_cache=False).logits[:, 299:-1].float()
    chosen = logits.gather(-1, out[:, 300:, None])[..., 0]
    assert (logits.max(-1).values - chosen).max().item() < 1e-2


def test_graph_decoder_replay_equals_eager_steps():
    """One CUDA graph per decode step gives the same logits as the eager step (bf16, Triton prefill)."""
    from tnl.hf import TnlForCausalLM
    from tnl.hf.export import tnl_config_from_args
    from tnl.hf.graph_decode import GraphDecoder

    torch.manual_seed(4)
    core = build_model(cfg("tnl"))
    hf = TnlForCausalLM(tnl_config_from_args(core.args))
    hf.load_state_dict(core.state_dict())
    hf = hf.cuda().to(torch.bfloat16).eval()
    ids = torch.randint(0, 512, (4, 257), device="cuda")
    eager, graph = GraphDecoder(hf, 4, use_graph=False), GraphDecoder(hf, 4, use_graph=True)
    le, lg = eager.prefill(ids, chunk=100), graph.prefill(ids, chunk=100)
    assert torch.equal(le, lg)
    for _ in range(6):
        tok = le.argmax(-1)
        le, lg = eager.step(tok).clone(), graph.step(tok).clone()
        assert torch.allclose(le.float(), lg.float(), atol=1e-2, rtol=1e-2)
    assert graph.graph is not None and graph.seen == eager.seen == 263

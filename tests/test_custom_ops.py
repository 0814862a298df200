"""tnl.ops.custom_ops: Lightning Attention-2 as a torch.library custom op (what torch.compile sees), on CPU.

- the torch backend's backward (three reference forwards, no autograd) against autograd through the chunked
  reference in float64: dense and packed documents (an empty one too), with and without decay, initial state and
  final-state gradient;
- the Triton halves (`tnl_kernels.lightning_attn_forward` / `_backward`, under the interpreter, fp32) against the
  autograd Function, with the key- and value-dim splits forced small so both split paths run;
- torch.library.opcheck (schema, fake implementation, autograd registration, AOT dispatch) on both backends;
- a tiny TNL with every block compiled (AOTAutograd, backend aot_eager: the same graphs inductor gets, no C++
  build): no graph break, two graphs per shape class for all layers (not one per layer), eager's loss and gradients.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():  # conftest does it too; this covers running the file on its own
    os.environ.setdefault("TRITON_INTERPRET", "1")

from numerics import rel_err
from tnl import ops
from tnl.ops import custom_ops, triton_backend
from tnl.reference import lightning_attn_chunked

pytestmark = pytest.mark.usefixtures("poison_empty")


def inputs(B, T, H, D, E, cu, seed, dtype=torch.float64, decay=True, state=True, dstate=True):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, T, H, D, generator=g, dtype=dtype) for _ in range(2))
    v, do = (torch.randn(B, T, H, E, generator=g, dtype=dtype) for _ in range(2))
    N = B if cu is None else len(cu) - 1
    slope = torch.rand(H, generator=g) * 0.5 if decay else None
    h0 = torch.randn(N, H, D, E, generator=g, dtype=dtype) if state else None
    dht = torch.randn(N, H, D, E, generator=g, dtype=dtype) if dstate else None
    cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    return q, k, v, slope, h0, cu_t, do, dht


CASES = {
    "dense": dict(B=2, T=37, H=2, D=16, E=8, cu=None),
    "packed_with_empty_doc": dict(B=1, T=70, H=3, D=8, E=16, cu=[0, 10, 10, 43, 70]),
    "no_decay_no_dstate": dict(B=2, T=65, H=1, D=4, E=4, cu=None, decay=False, dstate=False),
    "no_state": dict(B=1, T=30, H=2, D=8, E=8, cu=[0, 7, 30], state=False),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_torch_backward_matches_autograd_through_the_reference(name):
    c = dict(CASES[name])
    shape = [c.pop(x) for x in ("B", "T", "H", "D", "E", "cu")]
    q, k, v, slope, h0, cu, do, dht = inputs(*shape, seed=len(name), **c)
    leaves = [x.clone().requires_grad_() for x in (q, k, v)] + ([h0.clone().requires_grad_()] if h0 is not None
                                                                 else [])
    o, ht = lightning_attn_chunked(*leaves[:3], slope, leaves[3] if h0 is not None else None, cu)
    outs, grads = ([o, ht], [do, dht]) if dht is not None else ([o], [do])
    want = torch.autograd.grad(outs, leaves, grads)
    got = custom_ops._la2_torch_backward(q, k, v, slope, h0, cu, do, dht, h0 is not None)
    for i, w in enumerate(want):
        assert got[i].dtype == torch.float64 and rel_err(got[i], w) < 1e-12, (i, rel_err(got[i], w))
    assert (got[3] is None) == (h0 is None)


def interp_or_skip():
    if "compiled" in triton_backend.kernel_modes():
        pytest.skip("triton was imported compiled in this process (CUDA machine): interpreter tests run on CPU")


@pytest.mark.parametrize("config", [None, {"DMAX": 8, "EMAX": 8}, {"DMAX": 8}, {"EMAX": 4}])
def test_triton_halves_match_the_autograd_function(config, monkeypatch):
    """Forward and backward as two functions give the autograd Function's outputs and gradients (interpreter)."""
    interp_or_skip()
    kernels = triton_backend.kernels_module(torch.device("cpu"))  # interpreter set up, tnl_kernels imported
    q, k, v, slope, h0, cu, do, dht = inputs(1, 45, 2, 16, 8, [0, 20, 45], seed=3, dtype=torch.float32)
    leaves = [x.clone().requires_grad_() for x in (q, k, v, h0)]
    o, ht = kernels.lightning_attn_triton(*leaves[:3], slope, leaves[3], True, cu, config=config)
    want = torch.autograd.grad([o, ht], leaves, [do, dht])
    o2, ht2 = kernels.lightning_attn_forward(q, k, v, slope, h0, True, cu, config=config)
    assert rel_err(o2, o) < 1e-6 and rel_err(ht2, ht) < 1e-6
    got = kernels.lightning_attn_backward(q, k, v, slope, h0, cu, do, dht, True, config=config)
    for i, w in enumerate(want):
        assert rel_err(got[i], w) < 1e-5, (i, rel_err(got[i], w))
    none = kernels.lightning_attn_backward(q, k, v, slope, h0, cu, do, None, False, config=config)
    assert none[3] is None


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("case", ["dense_state", "packed"])
def test_opcheck(backend, case, monkeypatch):
    if backend == "triton":
        interp_or_skip()
    ops.configure(backend=backend)  # restored by conftest's kernel_settings
    if case == "dense_state":
        q, k, v, slope, h0, cu, _, _ = inputs(2, 37, 2, 16, 8, None, seed=7, dtype=torch.float32)
        args = (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), slope, h0.requires_grad_(), None, True)
    else:
        q, k, v, _, _, cu, _, _ = inputs(1, 41, 2, 8, 16, [0, 9, 9, 41], seed=8, dtype=torch.float32, state=False)
        args = (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), None, None, cu, False)
    torch.library.opcheck(custom_ops._la2, args, atol=1e-4, rtol=1e-4)


def test_compiled_blocks_are_one_graph_per_shape_class_and_match_eager():
    """All layers share the block graphs (the decay rates are a tensor input, not constants of the graph): three
    context lengths give 4 graphs (LRPE layer and the rest, static then dynamic shapes), with no graph break and
    the eager model's loss and gradients."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from tnl.models import build_model, compile_blocks

    cfg = dict(arch="tnl", vocab_size=61, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
               intermediate_size=40)
    torch.manual_seed(5)
    a, b = build_model(cfg), build_model(cfg)
    b.load_state_dict(a.state_dict())
    torch._dynamo.reset()
    counters.clear()
    compile_blocks(b, "aot_eager")
    try:
        for T in (9, 12, 16):
            ids, t = torch.randint(0, 61, (2, T)), torch.randint(0, 61, (2, T))
            la, lb = a(ids, t).loss, b(ids, t).loss
            la.backward()
            lb.backward()
            assert torch.allclose(la, lb, atol=1e-6)
            for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
                assert torch.allclose(pa.grad, pb.grad, atol=1e-6, rtol=1e-5), n
        assert dict(counters["graph_break"]) == {}
        assert counters["stats"]["unique_graphs"] == 4, dict(counters["stats"])
    finally:
        torch._dynamo.reset()


def test_recompute_elementwise_keeps_less_for_backward_and_the_same_gradients():
    """model.recompute_elementwise under compile (decompositions + min-cut partitioner, as inductor gets them): only
    matmul and LA2 outputs are kept, so fewer bytes wait for backward (tnl_385m's block: ~27.6 instead of ~43.5 KB
    per token under bf16 autocast), and loss and gradients are eager's."""
    import torch._dynamo

    from tnl.models import build_model, compile_blocks

    cfg = dict(arch="tnl", vocab_size=61, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=96)
    torch.manual_seed(6)
    ref = build_model(cfg)
    ids, t = torch.randint(0, 61, (2, 48)), torch.randint(0, 61, (2, 48))
    ref(ids, t).loss.backward()
    saved = {}
    try:
        for on in (False, True):
            m = build_model(dict(cfg, recompute_elementwise=on))
            m.load_state_dict(ref.state_dict())
            torch._dynamo.reset()
            compile_blocks(m, "aot_eager_decomp_partition")
            storages = {}

            def pack(x, storages=storages):
                if not isinstance(x, torch.nn.Parameter):
                    storages[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
                return x

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
                loss = m(ids, t).loss
            loss.backward()
            saved[on] = sum(storages.values())
            for (n, p), q in zip(ref.named_parameters(), m.parameters()):
                assert torch.allclose(p.grad, q.grad, atol=1e-6, rtol=1e-5), (on, n)
    finally:
        torch._dynamo.reset()
    assert saved[True] < 0.8 * saved[False], saved

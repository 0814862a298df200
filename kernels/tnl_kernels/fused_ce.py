"""Cross-entropy rows turned into their own gradient, in place: the kernel of the fused LM-head loss (tnl.ops.loss).

For each row r of a (rows, V) logits block x (bf16, fp16 or fp32) and its target t_r (the caller's ignore index,
tnl.ops.IGNORE_INDEX, skips the row):
    lse_r  = log sum_v exp(x_rv)                          (fp32, online over V in BLOCK-wide steps)
    loss_r = lse_r - x_r,t_r                              (0 for an ignored row; NaN for a target outside [0, V))
    x_rv  <- scale * (exp(x_rv - lse_r) - [v == t_r])     (d loss_r / d x_rv, in x's dtype; 0 for an ignored row)
One program per row. The logits are read twice (the online max/sum pass, then the gradient pass, whose re-read of a
row just seen should mostly hit L2: see _launch_cfg) and written once; nothing of size (rows, V) is allocated.
"""

import torch
import triton
import triton.language as tl


@triton.jit
def ce_grad_kernel(x, stride_x, tgt, loss, V, scale, IGNORE: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    p_row = x + row * stride_x
    t = tl.load(tgt + row).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    # pass 1: running max m and sum s of exp(x - m) over the row
    m = float("-inf")
    s = 0.0
    for start in range(0, V, BLOCK):
        offs = start + cols
        b_x = tl.load(p_row + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(b_x, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(b_x - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)
    ignored = t == IGNORE
    valid = (t >= 0) & (t < V)
    x_t = tl.load(p_row + t, mask=valid, other=0.0).to(tl.float32)
    row_loss = tl.where(valid, lse - x_t, float("nan"))
    tl.store(loss + row, tl.where(ignored, 0.0, row_loss))
    # pass 2: overwrite the row with scale * (softmax - onehot); an ignored row gets 0, an invalid target NaN
    g_scale = tl.where(ignored, 0.0, tl.where(valid, scale, float("nan")))
    for start in range(0, V, BLOCK):
        offs = start + cols
        m_ld = offs < V
        b_x = tl.load(p_row + offs, mask=m_ld, other=0.0).to(tl.float32)
        b_g = tl.exp(b_x - lse) - tl.where(offs == t, 1.0, 0.0)
        tl.store(p_row + offs, (b_g * g_scale).to(x.dtype.element_ty), mask=m_ld)


def _launch_cfg(V: int) -> tuple[int, int]:
    """(BLOCK, num_warps): 16 columns per thread, up to 32 warps. Wide programs mean few rows in flight: the sm_90
    compile (ptxas, no GPU needed) takes 45 registers at BLOCK 16384 / 32 warps (64 in fp32), no spill, so one
    program per SM: 132 rows x 128 KB (V = 64000, bf16) ~ 17 MB, well inside H100's 50 MB L2, and the gradient pass
    should re-read its row from L2, not HBM. 8 warps / BLOCK 4096 (54 registers) would keep ~4 rows per SM in flight,
    ~67 MB. (The interpreter is fastest with wide blocks too.)"""
    block = min(triton.next_power_of_2(V), 16384)
    return block, min(32, max(1, block // 512))


def ce_grad_inplace(logits: torch.Tensor, targets: torch.Tensor, scale: float = 1.0, *, ignore_index: int,
                    block: int | None = None) -> torch.Tensor:
    """Overwrite `logits` (rows, V) with scale * d(sum of row losses)/d logits; return the row losses (rows,) fp32.

    logits: bf16/fp16/fp32 with unit stride on V (rows may be strided); targets: (rows,) int32/int64, rows whose
    target is `ignore_index` are skipped. A target outside [0, V) (other than ignore_index) gives a NaN loss and NaN gradient row: loud, and without a device sync.
    `block` overrides the V step (a power of 2; tests use it to cover several steps with a small V)."""
    if logits.dim() != 2 or logits.stride(1) != 1:
        raise ValueError(f"logits must be 2-D (rows, V) with unit stride on V, got shape {tuple(logits.shape)} "
                         f"strides {logits.stride()}")
    if logits.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise TypeError(f"logits must be bfloat16, float16 or float32, got {logits.dtype}")
    rows, V = logits.shape
    if targets.shape != (rows,) or targets.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"targets must be ({rows},) int32/int64, got {tuple(targets.shape)} {targets.dtype}")
    if V == 0:
        raise ValueError("logits must have at least one column (V >= 1)")
    default_block, warps = _launch_cfg(V)
    block = block or default_block
    loss = torch.empty(rows, dtype=torch.float32, device=logits.device)
    if rows:
        ce_grad_kernel[(rows,)](logits, logits.stride(0), targets.contiguous(), loss, V, float(scale),
                                IGNORE=int(ignore_index), BLOCK=block, num_warps=warps)
    return loss

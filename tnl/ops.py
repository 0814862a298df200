"""TEMPORARY STUB (foundation): the public op facade. Replaced by the kernels work (issue 3).

Signature is final (DESIGN.md, Contract 1); the body is a slow step recurrence in torch.
"""

import math

import torch


def lightning_attn(q, k, v, slope=None, *, initial_state=None, output_final_state=False, cu_seqlens=None):
    B, T, H, D = q.shape
    E = v.shape[-1]
    if cu_seqlens is None:
        bounds = [(b, 0, T) for b in range(B)]
    else:
        cu = cu_seqlens.tolist()
        bounds = [(0, cu[i], cu[i + 1]) for i in range(len(cu) - 1)]
    lam = torch.ones(H, device=q.device) if slope is None else torch.exp(-slope.float())
    out = torch.zeros(B, T, H, E, device=q.device, dtype=torch.float32)
    finals = []
    for n, (b, s, e) in enumerate(bounds):
        S = (torch.zeros(H, D, E, device=q.device) if initial_state is None else initial_state[n].float())
        for t in range(s, e):
            S = lam[:, None, None] * S + k[b, t].float()[:, :, None] * v[b, t].float()[:, None, :]
            out[b, t] = torch.einsum("hd,hde->he", q[b, t].float(), S)
        finals.append(S)
    final = torch.stack(finals) if output_final_state else None
    return out.to(q.dtype), final


def srms_norm(x, eps=1e-6):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


_ = math

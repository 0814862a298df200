"""GraphDecoder: greedy/sampled TNL decoding with one CUDA graph per step (constant shapes make this possible).

A TNL decode step has fixed shapes whatever the context length: (B, 1) tokens in, (B, H, Dq, Dh) states in and
out. So the whole step (all layers, the O(1) recurrent updates and the LM head) can be captured once in a CUDA
graph and replayed, removing the per-token Python and kernel-launch overhead that dominates small-batch decoding.
The LRPE position is a tensor input of the graph, so the offset advances at every replay.

    dec = GraphDecoder(model, batch_size=B)     # model: TnlForCausalLM (or TnlLM), eval mode
    logits = dec.prefill(input_ids)             # chunked kernel, output_final_state -> static state buffers
    logits = dec.step(next_tokens)              # (B,) or (B, 1) -> (B, V); a graph replay on CUDA

On CPU (or with use_graph=False) step() runs the same code eagerly, which is what the CPU tests check.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class GraphDecoder:
    def __init__(self, model, batch_size: int, use_graph: bool | None = None, warmup: int = 2):
        self.model = model
        self.B = batch_size
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.use_graph = (self.device.type == "cuda") if use_graph is None else use_graph
        self.warmup = warmup
        self.graph = None
        self.ids = torch.zeros(batch_size, 1, dtype=torch.long, device=self.device)
        self.pos = torch.zeros(1, dtype=torch.long, device=self.device)
        self.states: list[torch.Tensor] | None = None
        self.logits = None
        self.seen = 0

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """Run the prompt (B, T) through the chunked op (`chunk` tokens at a time, the states carried over); keep
        the final states. Returns the last logits (B, V)."""
        if input_ids.shape[0] != self.B:
            raise ValueError(f"GraphDecoder was built for batch {self.B}, got input_ids of batch {input_ids.shape[0]}")
        T = input_ids.shape[1]
        chunk = chunk or T
        states = None
        for s in range(0, T, chunk):
            ids = input_ids[:, s:s + chunk].to(self.device)
            positions = torch.arange(s, s + ids.shape[1], device=self.device)
            h, states = self.model._hidden_states(ids, positions, None, states, None, return_states=True)
        if self.states is None:
            self.states = [s.clone() for s in states]
        else:
            for buf, s in zip(self.states, states):
                buf.copy_(s)
        self.seen = T
        return F.linear(h[:, -1], self.model.output_weight)

    def _step(self):
        h, new = self.model._hidden_states(self.ids, self.pos, None, self.states, None, return_states=True)
        for buf, s in zip(self.states, new):
            buf.copy_(s)
        out = F.linear(h[:, -1], self.model.output_weight)
        if self.logits is None:
            self.logits = out
        else:
            self.logits.copy_(out)

    def _capture(self):
        saved = [s.clone() for s in self.states]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm up (Triton compiles, caches fill) off the capture
            for _ in range(self.warmup):
                self._step()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._step()
        for buf, s in zip(self.states, saved):  # the warm-up and capture advanced the states: restore them
            buf.copy_(s)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per sequence ((B,) or (B, 1)); returns the next-token logits (B, V) (a static buffer on
        CUDA: copy it if you keep it across steps)."""
        if self.states is None:
            raise RuntimeError("call prefill() before step()")
        self.ids.copy_(tokens.reshape(self.B, 1))
        self.pos.fill_(self.seen)
        if self.use_graph:
            if self.graph is None:
                self._capture()
                self.ids.copy_(tokens.reshape(self.B, 1))
                self.pos.fill_(self.seen)
            self.graph.replay()
        else:
            self._step()
        self.seen += 1
        return self.logits

    def greedy(self, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy generation: (B, T) -> (B, T + max_new_tokens)."""
        return greedy_tokens(self, input_ids, max_new_tokens)


@torch.no_grad()
def greedy_tokens(decoder, input_ids: torch.Tensor, max_new_tokens: int, **prefill_kwargs) -> torch.Tensor:
    """Greedy generation through any decoder with `prefill(input_ids, **prefill_kwargs)` and `step(tokens)`, both
    returning next-token logits (B, V), and a `device`: (B, T) -> (B, T + max_new_tokens)."""
    logits = decoder.prefill(input_ids, **prefill_kwargs)
    out = [input_ids.to(decoder.device)]
    for _ in range(max_new_tokens):
        tok = logits.argmax(-1)
        out.append(tok[:, None].clone())
        logits = decoder.step(tok)
    return torch.cat(out, 1)

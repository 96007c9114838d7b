"""The teacher's image encoder as the shard uses it: mixed precision, scores, dense map,
timing, and CUDA graphs.

On a GPU the encoder is launch-bound from Python: a ViT-B forward is hundreds of small
kernel launches, and the shard's other threads (decoding, writing) compete for the GIL.
A CUDA graph captured once per (encoder, batch shape) replays the whole forward with one
launch; smaller batches are padded to the captured shape.
"""

from __future__ import annotations

import threading
import time
from contextlib import ExitStack, nullcontext

import torch

from pipeline.clip import Teacher


class GraphedForward:
    """``visual(x)`` captured as a CUDA graph for inputs [batch, 3, size, size].

    Replays overwrite the graph's output buffers, so results are cloned before the next
    replay can be queued; the lock keeps two threads from interleaving copy-in, replay
    and clone on the same buffers.
    """

    def __init__(self, visual, batch: int, size: int, device: torch.device):
        self.batch = batch
        self.static_in = torch.zeros(batch, 3, size, size, device=device)
        self.lock = threading.Lock()
        # autocast's weight cache must be off while capturing (the casts go into the graph)
        amp = lambda: torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)  # noqa: E731
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), torch.no_grad(), amp():
            for _ in range(2):  # warm-up outside the graph (cuDNN/cuBLAS picks, lazy inits)
                visual(self.static_in)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad(), amp():
            self.static_out = visual(self.static_in)

    def __call__(self, x: torch.Tensor):
        outs = []
        for a in range(0, len(x), self.batch):
            part = x[a:a + self.batch]
            with self.lock:
                self.static_in[:len(part)].copy_(part)
                self.graph.replay()
                outs.append(tuple(o[:len(part)].clone() for o in self.static_out))
        return tuple(torch.cat(t) for t in zip(*outs))


_GRAPHS: dict = {}
_GRAPHS_LOCK = threading.Lock()


def graphed(visual, batch: int, size: int, device: torch.device) -> GraphedForward:
    """One captured graph per (encoder, batch shape, device) and process."""
    key = (id(visual), batch, size, str(device))
    with _GRAPHS_LOCK:
        if key not in _GRAPHS:
            _GRAPHS[key] = GraphedForward(visual, batch, size, device)
        return _GRAPHS[key]


class Encoder:
    """Global and union passes with scores against the text embeddings.

    Results stay on the device (float16, the store's dtype) until the caller copies them,
    so the CPU can queue the next batch while the GPU still works on this one. On CUDA
    the encoder's time is measured with events, which do not stall the queue.
    """

    def __init__(self, teacher: Teacher, text: torch.Tensor, device: torch.device, *,
                 global_batch: int, crop_batch: int, cuda_graphs: bool = True):
        self.t, self.text, self.device = teacher, text, device
        self.cuda = device.type == "cuda"
        self.amp = torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else nullcontext()
        self.seconds = 0.0
        self.events: list = []
        g, u = teacher.global_model.visual, teacher.model.visual
        if self.cuda and cuda_graphs:
            self.global_fwd = graphed(g, global_batch, teacher.global_size, device)
            self.union_fwd = graphed(u, crop_batch, teacher.image_size, device)
        else:
            self.global_fwd, self.union_fwd = g, u

    def session(self) -> ExitStack:
        """Context for a whole shard: no autograd, and one autocast context so that the bf16
        copies of the weights are made once per shard rather than per forward pass."""
        stack = ExitStack()
        stack.enter_context(torch.no_grad())
        stack.enter_context(self.amp)
        return stack

    def _run(self, forward, x: torch.Tensor):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        else:
            t0 = time.perf_counter()
        pooled, tokens = forward(x)
        with torch.autocast(self.device.type, enabled=False):  # scores in float32, not bf16
            emb = pooled.float()
            emb = emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            score = emb @ self.text.T
        if self.cuda:
            end.record()
            self.events.append((start, end))
        else:
            self.seconds += time.perf_counter() - t0
        return emb.half(), score.half(), tokens

    def global_pass(self, x: torch.Tensor):
        """x: float32 [B, 3, G, G] -> emb [B, D], raw cosine [B, C], dense [B, h, w, D] (float16)."""
        emb, score, tokens = self._run(self.global_fwd, x)
        dense = tokens @ self.t.global_model.visual.proj
        h, w = self.t.grid
        return emb, score, dense.half().reshape(len(x), h, w, -1)

    def union_pass(self, x: torch.Tensor):
        """x: float32 [M, 3, S, S] -> emb [M, D], raw cosine [M, C] (float16)."""
        emb, score, _ = self._run(self.union_fwd, x)
        return emb, score

    def total_seconds(self) -> float:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.seconds += sum(s.elapsed_time(e) for s, e in self.events) / 1000
            self.events.clear()
        return self.seconds

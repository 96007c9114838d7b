"""The teacher's image encoder as the shard uses it: mixed precision, scores against the
text, the dense map, and timing that does not stall the GPU's queue.

(CUDA graphs of the encoder were tried on an H100 with ViT-B/16: no change in crops/s, the
encoder is not launch-bound, so the plain forward stays.)
"""

from __future__ import annotations

import time
from contextlib import ExitStack, nullcontext

import torch

from pipeline.teacher.clip import Teacher


class Encoder:
    """Global and union passes with scores against the text embeddings.

    Results stay on the device (float16, the store's dtype) until the caller copies them,
    so the CPU can queue the next batch while the GPU still works on this one. On CUDA
    the encoder's time is measured with events, which do not stall the queue.
    """

    def __init__(self, teacher: Teacher, text: torch.Tensor, device: torch.device):
        self.t, self.text, self.device = teacher, text, device
        self.cuda = device.type == "cuda"
        self.amp = torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else nullcontext()
        self.seconds = 0.0
        self.events: list = []
        self.global_fwd, self.union_fwd = teacher.global_model.visual, teacher.model.visual

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

"""CLIP's global pass over decoded images, outside a teacher cache (``hoi detect``).

The same cut and the same encoder as a shard's global pass (:mod:`pipeline.teacher.shard`): the
images padded into one canvas (:func:`pipeline.images.pad_into_canvas`, the on-image
channel when the teacher's crops may leave the image), each image's whole-image region
made square by the teacher's crop rule (:func:`whole_image_rois`) and cut by one
``roi_align``, the encoder under bf16 autocast on CUDA. So the dense map a student reads
here equals the one a ``--levels global`` cache stores for the same image.
"""

from __future__ import annotations

import numpy as np
import torch

from hoidata import boxes as B
from pipeline.images import pad_into_canvas
from pipeline.teacher import crops
from pipeline.teacher.clip import Teacher, load_teacher, text_embeddings
from pipeline.teacher.encoder import Encoder
from pipeline.teacher.options import TeacherOptions


def may_leave_image(opts: TeacherOptions) -> bool:
    """Whether the teacher's crops may reach outside their image (then the canvas carries the
    on-image channel, which the normalisation needs there)."""
    return opts.crop_mode == "pad" or opts.union_margin > 0


def whole_image_rois(sizes: np.ndarray, crop_mode: str) -> np.ndarray:
    """float64 [n, 4]: each whole image (sizes [n, 2] (w, h)) made square by ``crop_mode``."""
    wh = np.asarray(sizes, np.float64)
    return B.square(np.concatenate([np.zeros_like(wh), wh], 1), crop_mode)


class GlobalPass:
    """A loaded teacher and its text embeddings; called on uint8 [H, W, 3] images (any sizes),
    returns (embedding [n, D], raw cosine scores [n, C], dense map [n, h, w, D]), float16."""

    def __init__(self, opts: TeacherOptions, prompts, device: torch.device, teacher: Teacher | None = None):
        self.opts, self.device = opts, device
        self.teacher = teacher or load_teacher(opts.model, opts.pretrained, global_size=opts.global_size,
                                               mean=opts.mean, std=opts.std, device=device)
        self.text = text_embeddings(self.teacher, prompts, opts.templates, device=device)  # float32 [C, D]
        self.encoder = Encoder(self.teacher, torch.from_numpy(self.text).to(device), device)
        self.mean = torch.tensor(self.teacher.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(self.teacher.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    def whole_images(self, images: list[np.ndarray]) -> torch.Tensor:
        """float32 [n, 3, G, G] on the device: each image (uint8 [H, W, 3], n >= 1) made square
        by the teacher's crop rule, resized to the global size and normalised, as the encoder reads it."""
        sizes = np.array([(a.shape[1], a.shape[0]) for a in images])
        canvas = pad_into_canvas(images, may_leave_image(self.opts), pin=self.device.type == "cuda")
        rois = np.concatenate([np.arange(len(images))[:, None], whole_image_rois(sizes, self.opts.crop_mode)], 1)
        pixels = canvas.to(self.device, non_blocking=True).float()
        return crops.crop_normalised(pixels, torch.from_numpy(rois.astype(np.float32)).to(self.device),
                                     self.teacher.global_size, self.mean, self.std)

    def __call__(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not images:
            d, c, (h, w) = self.text.shape[1], self.text.shape[0], self.teacher.grid
            return (np.zeros((0, d), np.float16), np.zeros((0, c), np.float16), np.zeros((0, h, w, d), np.float16))
        with self.encoder.session():
            emb, score, dense = self.encoder.global_pass(self.whole_images(images))
        return emb.cpu().numpy(), score.cpu().numpy(), dense.cpu().numpy()

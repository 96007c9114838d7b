"""The student: fits three branches on a teacher cache, predicts, evaluates, ablates.

Modules (import what you use; this package imports nothing heavy by itself):

- :mod:`trainer.config`: :class:`~trainer.config.TrainConfig`, every switch of a run.
- :mod:`trainer.branches`: what each branch reads, which loss trains it and from what: one table.
- :mod:`trainer.cache_info`: what a cache means to the student (label space, seen classes, crop rule).
- :mod:`trainer.batch`: :class:`~trainer.batch.Block` (numpy) and :class:`~trainer.batch.Batch` (tensors).
- :mod:`trainer.geometry`: boxes into the dense map's grid; candidate pairs from detections.
- :mod:`trainer.loader`: blocks of cached images and pairs, streamed or held in memory.
- :mod:`trainer.model`: :class:`~trainer.model.Student` (global, human-object, union branches).
- :mod:`trainer.roi`: the adapted map and RoI-align as a matrix product, behind ``pool_boxes``.
- :mod:`trainer.losses`: :class:`~trainer.losses.DistillationLoss` (soft labels from CLIP's raw scores).
- :mod:`trainer.engine`: ``train_one_epoch`` and :func:`~trainer.engine.train` (checkpoints, resume).
- :mod:`trainer.checkpoint`: safetensors + JSON checkpoints, and the checks that refuse a wrong cache.
- :mod:`trainer.predict`: predictions (student, teacher, random) and evaluation from the cache alone.
- :mod:`trainer.ablate`: the paper's ablation grid as one table.

Layering: imports ``cache`` and ``hoidata``, never ``pipeline`` or ``hoi``. What the cache
buys, in pairs/s and ms per test image, is measured outside the package (``bench.trainer``).
"""

"""``tiny-fcos``, the bundled benchmark's own detector: the model (``model``) and its
trainer (``train``, ``python -m pipeline.tiny_fcos.train``)."""

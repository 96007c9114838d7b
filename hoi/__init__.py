"""hoi-distill's application layer: the ``hoi`` command line.

The libraries live beside it: ``hoidata`` (label spaces, annotations, detections,
evaluation), ``cache`` (the teacher cache), ``pipeline`` (the teacher) and ``trainer``
(the student). This package is the only one that imports them all.
"""

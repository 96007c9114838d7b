"""Dataset knowledge: label spaces, annotations, boxes, detections, predictions and the
evaluator (above :mod:`hoicore`, below the cache, the pipeline and the trainer)."""

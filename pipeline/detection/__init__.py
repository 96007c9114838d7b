"""``hoi detections run``: loading a detector offline and mapping its classes
(``detector``), how a run goes (``options``), and the stage over a folder of images
(``stage``)."""

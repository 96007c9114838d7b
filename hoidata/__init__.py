"""Dataset knowledge: label spaces, annotations, boxes, detections and the evaluator."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hoi-distill")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

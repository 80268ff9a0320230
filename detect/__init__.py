"""R-CNN style detection with GoogLeNet region classifiers (paper section 8).

    from detect import Detector
    detector = Detector.load("runs/det")          # or Detector.load() for the built-in model
    dets = detector.detect("photo.jpg")           # {"boxes": [D, 4], "scores": [D], "labels": [D]}
    probs = detector.score_regions("photo.jpg", boxes)   # Tensor[R, K+1], column 0 background
"""
from importlib import import_module

# Loaded on first use (PEP 562), so that `detect.entry` and `detect.allocator` can run before
# torch is imported.
_EXPORTS = {
    "DetectorConfig": "detect.config", "FinetuneConfig": "detect.config",
    "InferenceConfig": "detect.config", "RegionConfig": "detect.config",
    "Detector": "detect.detector", "detect_dataset": "detect.dataset_detections",
    "save_detector_run": "detect.detector", "select_detections": "detect.detector",
    "warp_regions": "detect.regions",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'detect' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

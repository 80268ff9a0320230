"""R-CNN style detection with GoogLeNet region classifiers (paper section 8).

    from detect import Detector
    detector = Detector.load("runs/det")          # or Detector.load() for the built-in model
    dets = detector.detect("photo.jpg")           # {"boxes": [D, 4], "scores": [D], "labels": [D]}
    probs = detector.score_regions("photo.jpg", boxes)   # Tensor[R, K+1], column 0 background
"""
from detect.config import DetectorConfig, FinetuneConfig, InferenceConfig, RegionConfig
from detect.detector import Detector, detect_dataset, save_detector_run, select_detections
from detect.regions import warp_regions

__all__ = [
    "Detector", "DetectorConfig", "FinetuneConfig", "InferenceConfig", "RegionConfig",
    "detect_dataset", "save_detector_run", "select_detections", "warp_regions",
]

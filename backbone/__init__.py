"""backbone: the paper's GoogLeNet, its classification training and evaluation, classification data."""
from backbone.googlenet import GoogLeNet, GoogLeNetOutputs  # noqa: F401
from backbone.models import ModelMeta, build_model, load_classifier, read_meta, save_classifier  # noqa: F401
from backbone.data import ImageDataset, scan_image_folder  # noqa: F401
from backbone.transforms import EvalTransform, TrainTransform  # noqa: F401
from backbone.train import ClassifierConfig, ModelEMA, evaluate, train_classifier, train_one_epoch  # noqa: F401

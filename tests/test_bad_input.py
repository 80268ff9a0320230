"""Every command against broken input: one line naming the file and the problem, exit status 2,
no traceback -- or, for what is documented as handled (alpha, gray, 16-bit, EXIF, 1x1 images,
an annotation without <size>), a normal run. Batch commands skip bad images, list them at the
end and keep every good result (exit status 1).

Everything is tiny: width-1/8 networks at 32-64 px, one-strategy selective search on 48 px
images, one training epoch over a few images.
"""
from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backbone.errors import InputError
from backbone.io import check_image, load_image, save_weights
from backbone.models import ModelMeta, build_model, save_classifier
from detect.cli import main
from detect.config import DetectorConfig
from detect.data import write_voc
from detect.detector import save_detector_run

SIZE = 48
FAST_PROPOSALS = ["selective_search.mode=single", "selective_search.resize_width=0",
                  "selective_search.min_size=4", "min_size=4", "selective_search.max_boxes=10"]
RUN_PROPOSALS = [f"proposals.{o}" for o in FAST_PROPOSALS] + ["inference.precision=float32"]
TINY_TRAIN = ["model.width=0.125", "model.input_size=32", "train.batch_size=2", "train.epochs=1",
              "train.workers=0", "train.threads=1", "train.eval_batch_size=4"]


def invoke(capsys, *argv: str) -> tuple[int, str, str]:
    """Run `detect ARGV` in-process as the console script does: (exit status, stdout, stderr)."""
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line_error(result: tuple[int, str, str], *words: str) -> None:
    """Exit 2, no traceback, the last stderr line an `error:` naming every word given."""
    code, out, err = result
    assert code == 2, (code, out, err)
    assert "Traceback" not in err + out
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") or last.startswith("Error: "), err
    for word in words:
        assert word in last, (word, last)


# ----------------------------------------------------------------------------- the images


def scene(seed: int = 0, size: int = SIZE) -> np.ndarray:
    """A noisy background with two flat rectangles (something for selective search)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(90, 140, (size, size, 3), dtype=np.uint8)
    img[5:25, 4:24] = (230, 30, 30)
    img[24:44, 26:44] = (20, 40, 220)
    return img


def _jpeg(pixels: np.ndarray, exif: bytes | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90, **({"exif": exif} if exif else {}))
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _huge_png_header(width: int = 30000, height: int = 30000) -> bytes:
    """A PNG whose header claims width x height but which holds almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) \
        + chunk(b"IEND", b"")


def _exif_rotated() -> bytes:
    """Stored 48 wide x 24 high with orientation 6: viewers show it 24 wide x 48 high."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _jpeg(scene()[:24], exif.tobytes())


def _sixteen_bit() -> bytes:
    return _png(Image.fromarray((scene()[:, :, 0].astype(np.uint16) * 257)))


# name -> (file name, bytes, None when handled, else words of the expected error)
IMAGE_CASES = {
    "truncated_jpeg": ("truncated.jpg", lambda: _jpeg(scene())[:400], ["cannot read image"]),
    "text_as_jpeg": ("text.jpg", lambda: b"this is not an image\n", ["cannot read image"]),
    "huge_header": ("huge.png", _huge_png_header, ["30000x30000"]),
    "png_alpha": ("alpha.png", lambda: _png(Image.fromarray(scene()).convert("RGBA")), None),
    "grayscale": ("gray.png", lambda: _png(Image.fromarray(scene()).convert("L")), None),
    "png_16_bit": ("deep.png", _sixteen_bit, None),
    "one_pixel": ("dot.png", lambda: _png(Image.new("RGB", (1, 1), (200, 10, 10))), None),
    "exif_rotated": ("rotated.jpg", _exif_rotated, None),
}


def write_case(folder: Path, case: str) -> Path:
    name, make, _ = IMAGE_CASES[case]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(make())
    return folder / name


def test_handled_images_load_as_documented(tmp_path):
    """The handled cases by hand: what `load_image` gives every command."""
    alpha = Image.fromarray(scene()).convert("RGBA")
    alpha.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent: white, not its stored black
    alpha.save(tmp_path / "a.png")
    assert load_image(tmp_path / "a.png")[0, 0].tolist() == [255, 255, 255]
    gray = load_image(write_case(tmp_path, "grayscale"))
    assert gray.shape == (SIZE, SIZE, 3) and (gray[..., 0] == gray[..., 2]).all()
    deep = load_image(write_case(tmp_path, "png_16_bit"))
    assert deep.dtype == np.uint8 and (deep[..., 0] == scene()[..., 0]).all()  # v * 257 -> v
    assert load_image(write_case(tmp_path, "exif_rotated")).shape == (48, 24, 3)  # as viewers show it
    assert load_image(write_case(tmp_path, "one_pixel")).shape == (1, 1, 3)


def test_pixel_limit_is_checked_before_decoding_and_configurable(tmp_path, monkeypatch, capsys):
    huge = write_case(tmp_path, "huge_header")  # 2.7 GB of pixels if it were decoded
    with pytest.raises(InputError, match="30000x30000 = 900000000 pixels, above the limit"):
        load_image(huge)
    path = write_case(tmp_path, "grayscale")
    with pytest.raises(InputError, match="above the limit of 1000"):
        load_image(path, max_pixels=1000)
    monkeypatch.setenv("DETECT_MAX_PIXELS", "1000")
    with pytest.raises(InputError, match="above the limit of 1000"):
        load_image(path)


# ----------------------------------------------------------------------------- tiny models


def tiny_classifier(run: Path, classes: list[str], width: float = 0.125, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = build_model("googlenet", len(classes), width=width, aux_logits=False, dropout=0.0)
    save_classifier(run, model, ModelMeta("googlenet", len(classes), classes, width=width, input_size=32))
    return run


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Good and broken classifier and detector runs."""
    root = tmp_path_factory.mktemp("models")
    good = tiny_classifier(root / "cls", ["c0", "c1"])
    nan = tiny_classifier(root / "nan", ["c0", "c1"])
    state = {k: v.clone() for k, v in build_model("googlenet", 2, width=0.125, aux_logits=False).state_dict().items()}
    state["fc.weight"][0, 0] = float("nan")
    save_weights(nan / "model.safetensors", state)
    classes3 = tiny_classifier(root / "classes3", ["c0", "c1", "c2"])
    meta = json.loads((classes3 / "model.json").read_text())  # weights of 3 classes, says 2
    (classes3 / "model.json").write_text(json.dumps(dict(meta, num_classes=2, classes=["c0", "c1"])))
    other_width = tiny_classifier(root / "width", ["c0", "c1"], width=0.25)
    meta = json.loads((other_width / "model.json").read_text())
    (other_width / "model.json").write_text(json.dumps(dict(meta, width=0.125)))
    other_arch = tiny_classifier(root / "arch", ["c0", "c1"])
    meta = json.loads((other_arch / "model.json").read_text())
    (other_arch / "model.json").write_text(json.dumps(dict(meta, arch="torchvision_googlenet", width=1.0)))
    broken_meta = tiny_classifier(root / "meta", ["c0", "c1"])
    (broken_meta / "model.json").write_text(json.dumps({"arch": "googlenet", "width": "wide"}))

    cfg = DetectorConfig()
    cfg.inference.precision = "float32"
    torch.manual_seed(0)
    member = build_model("googlenet", 3, width=0.125, aux_logits=False, dropout=0.0).eval()
    det_meta = ModelMeta("googlenet", 3, ["bg", "a", "b"], width=0.125, input_size=32)
    save_detector_run(root / "det", [(member, det_meta)], cfg, ["a", "b"])
    save_detector_run(root / "det_nan", [(member, det_meta)], cfg, ["a", "b"])
    save_weights(root / "det_nan" / "members" / "0" / "model.safetensors", state)  # NaN, 2 outputs
    return {"cls": good, "nan": nan, "classes3": classes3, "width": other_width, "arch": other_arch,
            "meta": broken_meta, "det": root / "det", "det_nan": root / "det_nan"}


# ----------------------------------------------------------------------------- image x command


def voc_with(root: Path, image: Path | None) -> Path:
    """A VOC set of one good image `good.png` (and `image`, if given), one box each."""
    img_dir = root / "JPEGImages"
    img_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(scene(1)).save(img_dir / "good.png")
    box, label = torch.tensor([[4.0, 5.0, 24.0, 25.0]]), torch.tensor([1])
    write_voc(root, "good", (SIZE, SIZE), box, label, ["thing"], filename="good.png")
    if image is not None:
        (img_dir / image.name).write_bytes(image.read_bytes())
        try:  # annotated as viewers show it (EXIF applied)
            h, w = load_image(image).shape[:2]
        except InputError:
            h = w = SIZE
        box = torch.tensor([[0.0, 0.0, min(w, 20), min(h, 20)]])
        write_voc(root, image.stem, (w, h), box, label, ["thing"], filename=image.name)
    return root


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_image_cases_through_every_command(case, models, tmp_path, capsys):
    image = write_case(tmp_path / "in", case)
    problem = IMAGE_CASES[case][2]
    name = image.name

    # detect run --image: one image, so an unreadable one is a one-line error
    result = invoke(capsys, "run", "--image", image, "--model", models["det"], "--out", tmp_path / "r1",
                    "--device", "cpu", *RUN_PROPOSALS)
    if problem:
        assert_one_line_error(result, name, *problem)
    else:
        assert result[0] == 0, result
        assert json.loads((tmp_path / "r1" / "run.json").read_text())["images"][0]["file"] == str(image)

    # detect run --images: a batch keeps the good image and lists the bad one at the end
    batch = tmp_path / "batch"
    batch.mkdir()
    Image.fromarray(scene(2)).save(batch / "good.png")
    (batch / name).write_bytes(image.read_bytes())
    code, out, err = invoke(capsys, "run", "--images", batch, "--model", models["det"], "--out",
                            tmp_path / "r2", "--device", "cpu", *RUN_PROPOSALS)
    done = [Path(i["file"]).name for i in json.loads((tmp_path / "r2" / "run.json").read_text())["images"]]
    assert "Traceback" not in err
    if problem:
        assert code == 1 and done == ["good.png"] and name in err.strip().splitlines()[-1]
    else:
        assert code == 0 and sorted(done) == sorted(["good.png", name])

    # detect eval --accuracy: a batch over a class folder
    folder = tmp_path / "val"
    (folder / "c0").mkdir(parents=True)
    Image.fromarray(scene(3)).save(folder / "c0" / "good.png")
    (folder / "c0" / name).write_bytes(image.read_bytes())
    code, out, err = invoke(capsys, "eval", "--accuracy", "--data", folder, "--model", models["cls"],
                            "--device", "cpu", "--workers", "0", "--json", tmp_path / "acc.json")
    assert code == 0 and "Traceback" not in err, err
    scored = json.loads((tmp_path / "acc.json").read_text())["images"]
    assert scored == (1 if problem else 2)
    if problem:
        assert name in err

    # detect data and detect proposals on a VOC set holding the image
    voc = voc_with(tmp_path / "voc", image)
    code, out, err = invoke(capsys, "data", "--data", voc)
    assert "Traceback" not in err and code == (1 if problem else 0), out
    if problem:
        assert name in out
    code, out, err = invoke(capsys, "proposals", "--data", voc, "--out", tmp_path / "cache",
                            "--workers", "1", "--quiet", *FAST_PROPOSALS)
    assert "Traceback" not in err and code == (1 if problem else 0), err
    cached = sorted(p.name for p in (tmp_path / "cache" / "boxes").iterdir())
    assert cached == (["good.safetensors"] if problem else sorted(["good.safetensors", f"{image.stem}.safetensors"]))
    if problem:
        assert name in err.strip().splitlines()[-1]


@pytest.mark.parametrize("case", ["truncated_jpeg", "grayscale"])
def test_train_classifier_with_an_odd_image(case, tmp_path, capsys):
    """Training reads every image each epoch: an unreadable one is refused up front, naming it."""
    data = tmp_path / "data"
    for split in ("train", "val"):
        for k in range(2):
            (data / split / f"c{k}").mkdir(parents=True)
            Image.fromarray(scene(k)).save(data / split / f"c{k}" / "good.png")
    image = write_case(data / "train" / "c0", case)
    config = tmp_path / "tiny.yaml"
    config.write_text("train:\n  epochs: 1\n")
    # a batch of 3 holds every image; a worker process re-raises the error in the main process
    result = invoke(capsys, "train-classifier", "--data", data, "--config", config, "--out",
                    tmp_path / "run", "--device", "cpu", *TINY_TRAIN, "train.batch_size=3",
                    "train.workers=1")
    if IMAGE_CASES[case][2]:
        assert_one_line_error(result, image.name, "cannot read image")
    else:
        assert result[0] == 0, result


# ----------------------------------------------------------------------------- annotations x command


def _voc_xml(root: Path, key: str, box: tuple, filename: str | None = None, size: bool = True) -> None:
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    Image.fromarray(scene()).save(root / "JPEGImages" / f"{key}.png")
    size_xml = f"<size><width>{SIZE}</width><height>{SIZE}</height><depth>3</depth></size>" if size else ""
    (root / "Annotations" / f"{key}.xml").write_text(
        f"<annotation><filename>{filename or key + '.png'}</filename>{size_xml}<object><name>thing</name>"
        "<bndbox>" + "".join(f"<{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
        + "</bndbox></object></annotation>")


def _voc(root: Path, **bad) -> Path:
    """A VOC set: good image `a` and, with keywords, image `b` annotated with them."""
    _voc_xml(root, "a", (4, 5, 24, 25))
    if bad:
        _voc_xml(root, "b", bad.pop("box", (4, 5, 24, 25)), **bad)
    return root


def _coco(root: Path, category: int = 1, file_name: str = "a.png", images: bool = True) -> Path:
    root.mkdir(parents=True)
    Image.fromarray(scene()).save(root / "a.png")
    doc = {"images": [{"id": 1, "file_name": file_name, "width": SIZE, "height": SIZE}] if images else [],
           "annotations": [{"id": 1, "image_id": 1, "category_id": category, "bbox": [4, 5, 20, 20],
                            "area": 400, "iscrowd": 0}] if images else [],
           "categories": [{"id": 1, "name": "thing"}]}
    (root / "instances.json").write_text(json.dumps(doc))
    return root / "instances.json"


def _escaping_split(root: Path) -> Path:
    _voc(root)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\n../../../etc/passwd\n")
    return root


def _empty_voc(root: Path) -> Path:
    (root / "Annotations").mkdir(parents=True)
    return root


# name -> (make data set, split, {command: (outcome, words)}): "ok"; "listed" = skipped and listed
# with exit status 1 (detect data reports every problem); "error" = one-line error, exit 2.
LISTED_OR_ERROR = {"data": "listed", "map": "error", "proposals": "error"}
ANNOTATION_CASES = {
    "xml_without_size": (lambda r: _voc(r, size=False), None, {c: "ok" for c in LISTED_OR_ERROR},
                         []),
    "box_x2_before_x1": (lambda r: _voc(r, box=(24, 5, 4, 25)), None, LISTED_OR_ERROR,
                         ["b.xml", "x2 < x1"]),
    "coco_unknown_category": (lambda r: _coco(r, category=7), None, LISTED_OR_ERROR,
                              ["instances.json", "unknown category_id 7"]),
    "voc_filename_outside": (lambda r: _voc(r, filename="../../secret.png"), None, LISTED_OR_ERROR,
                             ["b.xml", "outside the data set"]),
    "coco_absolute_file_name": (lambda r: _coco(r, file_name="/etc/passwd"), None,
                                {c: "error" for c in LISTED_OR_ERROR}, ["instances.json", "outside"]),
    "split_list_outside": (_escaping_split, "train", {c: "error" for c in LISTED_OR_ERROR},
                           ["train.txt", "outside"]),
    "empty_voc": (_empty_voc, None, {c: "error" for c in LISTED_OR_ERROR}, ["Annotations", "no .xml"]),
    "empty_coco": (lambda r: _coco(r, images=False), None,
                   LISTED_OR_ERROR, ["instances.json", "no images"]),
}


@pytest.mark.parametrize("case", list(ANNOTATION_CASES))
def test_annotation_cases_through_every_command(case, tmp_path, capsys):
    make, split, expected, words = ANNOTATION_CASES[case]
    spec = make(tmp_path / "set")
    split_args = ["--split", split] if split else []
    (tmp_path / "none.json").write_text("[]")  # no detections: mAP 0, but the set is read
    commands = {
        "data": ["data", "--data", spec, *split_args],
        "map": ["eval", "--map", "--data", spec, "--detections", tmp_path / "none.json", *split_args],
        "proposals": ["proposals", "--data", spec, "--out", tmp_path / "cache", "--workers", "1",
                      "--quiet", *split_args, *FAST_PROPOSALS],
    }
    for command, argv in commands.items():
        result = invoke(capsys, *argv)
        code, out, err = result
        assert "Traceback" not in out + err, (command, err)
        if expected[command] == "ok":
            assert code == 0, (command, result)
        elif expected[command] == "listed":
            assert code == 1 and all(w in out for w in words), (command, result)
        else:
            assert_one_line_error(result, *words)


def test_xml_without_size_takes_the_image_header(tmp_path):
    from detect.data import load_dataset

    records = load_dataset(_voc(tmp_path / "set", size=False)).images
    assert [(r.key, r.width, r.height) for r in records] == [("a", SIZE, SIZE), ("b", SIZE, SIZE)]


# ----------------------------------------------------------------------------- weights and configs


WEIGHT_CASES = {  # model -> words of the error
    "nan": ["model.safetensors", "NaN"],
    "classes3": ["model.safetensors", "do not match"],
    "width": ["model.safetensors", "do not match"],
    "arch": ["model.safetensors", "do not match"],
    "meta": ["model.json", "not a model description"],
}


@pytest.mark.parametrize("case", list(WEIGHT_CASES))
def test_bad_weights_are_refused(case, models, tmp_path, capsys):
    folder = tmp_path / "val"
    (folder / "c0").mkdir(parents=True)
    Image.fromarray(scene()).save(folder / "c0" / "a.png")
    assert_one_line_error(invoke(capsys, "eval", "--accuracy", "--data", folder, "--model", models[case],
                                 "--device", "cpu", "--workers", "0"), *WEIGHT_CASES[case])
    if case == "meta":
        assert_one_line_error(invoke(capsys, "summary", "--model", models[case]), *WEIGHT_CASES[case])


def test_detector_with_nan_weights_is_refused(models, tmp_path, capsys):
    Image.fromarray(scene()).save(tmp_path / "a.png")
    assert_one_line_error(invoke(capsys, "run", "--image", tmp_path / "a.png", "--model", models["det_nan"],
                                 "--out", tmp_path / "out", "--device", "cpu"), "model.safetensors", "NaN")


CONFIG_CASES = {  # name -> (YAML text of a section with an integer field, words of the error)
    "unknown_key": (lambda section, field: f"{section}:\n  {field}: 1\n  bogus_key: 2\n", ["bogus_key"]),
    "wrong_type": (lambda section, field: f"{section}:\n  {field}: many\n", ["many"]),
    "unknown_section": (lambda section, field: "nonsense:\n  a: 1\n", ["nonsense"]),
    "not_yaml": (lambda section, field: f"{section}: [1, 2\n", ["malformed YAML"]),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_configs_are_refused_by_every_command(case, models, tmp_path, capsys):
    text, words = CONFIG_CASES[case]
    voc = _voc(tmp_path / "voc")
    commands = {  # (config section, one of its integer fields): command line
        ("train", "epochs"): ["train-classifier", "--data", tmp_path, "--out", tmp_path / "r1"],
        ("finetune", "epochs"): ["train-detector", "--data", voc, "--proposals", tmp_path, "--init",
                                 models["cls"], "--out", tmp_path / "r2"],
        ("selective_search", "max_boxes"): ["proposals", "--data", voc, "--out", tmp_path / "r3"],
        ("train", "batch_size"): ["train-multibox", "--data", voc, "--out", tmp_path / "r4"],
    }
    for (section, field), argv in commands.items():
        config = tmp_path / f"{argv[0]}.yaml"
        config.write_text(text(section, field))
        assert_one_line_error(invoke(capsys, *argv, "--config", config), config.name, *words)


@pytest.mark.parametrize("override, words", [("inference.nope=1", ["inference.nope"]),
                                              ("inference.batch_size=many", ["inference.batch_size"])])
def test_bad_overrides_are_refused(override, words, models, tmp_path, capsys):
    Image.fromarray(scene()).save(tmp_path / "a.png")
    assert_one_line_error(invoke(capsys, "run", "--image", tmp_path / "a.png", "--model", models["det"],
                                 "--out", tmp_path / "out", "--device", "cpu", override), *words)
    assert_one_line_error(invoke(capsys, "train-classifier", "--data", tmp_path, "--out", tmp_path / "r",
                                 "--config", _empty_yaml(tmp_path), override.replace("inference.", "train.")),
                          "train.")


def _empty_yaml(folder: Path) -> Path:
    (folder / "empty.yaml").write_text("{}\n")
    return folder / "empty.yaml"


# ----------------------------------------------------------------------------- found before the model


def test_check_image_reads_the_header_only(tmp_path):
    """What a command can check before it loads a model: a JPEG cut in its pixel data has a
    whole header (only decoding finds the damage); one cut in its header, a text file, a
    folder, a missing file or too many pixels fail."""
    half = _half_jpeg(tmp_path)
    assert check_image(half) == (200, 200)
    with pytest.raises(InputError, match="cannot read image"):
        load_image(half)
    assert check_image(write_case(tmp_path, "exif_rotated")) == (48, 24)  # as stored
    for path, problem in [(write_case(tmp_path, "truncated_jpeg"), "cannot read image"),
                          (write_case(tmp_path, "text_as_jpeg"), "cannot read image"),
                          (tmp_path, "is a folder"), (tmp_path / "none.png", "not found"),
                          (write_case(tmp_path, "huge_header"), "above the limit")]:
        with pytest.raises(InputError, match=problem):
            check_image(path)


def _nothing_written(out: Path) -> bool:
    return not out.exists()


def _half_jpeg(folder: Path) -> Path:
    """A JPEG cut in the middle of its pixel data: its header reads, decoding fails."""
    folder.mkdir(parents=True, exist_ok=True)
    whole = _jpeg(scene(size=200))
    (folder / "half.jpg").write_bytes(whole[:len(whole) // 2])
    return folder / "half.jpg"


@pytest.mark.parametrize("make, words", [
    (lambda d: d / "missing.jpg", ["missing.jpg", "not found"]),
    (lambda d: d, ["is a folder", "--images"]),
    (lambda d: write_case(d, "text_as_jpeg"), ["text.jpg", "cannot read image"]),
    (lambda d: write_case(d, "truncated_jpeg"), ["truncated.jpg", "cannot read image"]),
    (_half_jpeg, ["half.jpg", "cannot read image"]),
])
def test_one_bad_image_is_one_line_before_the_model_loads(make, words, models, tmp_path, capsys):
    """The model given is broken (NaN weights): an error naming the image, not the weights, shows
    the image was checked first. Nothing is written, not even the output folder."""
    image = make(tmp_path / "in")
    (tmp_path / "in").mkdir(exist_ok=True)
    out = tmp_path / "out"
    result = invoke(capsys, "run", "--image", image, "--model", models["det_nan"], "--out", out)
    assert_one_line_error(result, *words)
    assert len(result[2].strip().splitlines()) == 1 and result[1] == ""
    assert _nothing_written(out)


def test_a_missing_image_among_good_ones_is_refused_up_front(models, tmp_path, capsys):
    Image.fromarray(scene()).save(tmp_path / "a.png")
    out = tmp_path / "out"
    result = invoke(capsys, "run", "--image", tmp_path / "a.png", "--image", tmp_path / "b.png",
                    "--model", models["det_nan"], "--out", out)
    assert_one_line_error(result, "b.png", "not found")
    assert _nothing_written(out)


@pytest.mark.parametrize("fill", ["empty", "unreadable"])
def test_a_folder_without_a_readable_image_is_refused_up_front(fill, models, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    if fill == "unreadable":
        write_case(folder, "text_as_jpeg")
        (folder / "b.png").write_bytes(b"not a png either")
    out = tmp_path / "out"
    result = invoke(capsys, "run", "--images", folder, "--model", models["det_nan"], "--out", out)
    assert_one_line_error(result, str(folder), "image" if fill == "empty" else "none of the 2")
    assert _nothing_written(out)

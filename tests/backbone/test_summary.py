"""The Table 1 listing: totals of the paper, rows cross-checked against hand formulas."""
import pytest
import torch
from click.testing import CliRunner

from backbone.errors import InputError
from backbone.googlenet import INCEPTION_SPECS
from backbone.models import build_model
from backbone.summary import build_summary, format_summary, summarize
from detect.cli_backbone import summary as summary_command


@pytest.fixture(scope="module")
def paper():
    return build_summary("googlenet", 1.0, 224, 1000, aux=True)


def inception_macs(cin, c1, c3r, c3, c5r, c5, pp, side):
    """Multiply-adds of one inception block by hand: 1x1 convs cost cin x cout per pixel."""
    per_pixel = cin * c1 + cin * c3r + c3r * c3 * 9 + cin * c5r + c5r * c5 * 25 + cin * pp
    return per_pixel * side * side


def test_paper_totals(paper):
    assert paper.params == 6_998_552
    assert paper.aux_params == 6_379_728
    assert abs(paper.macs / 1.58e9 - 1) < 0.01


def test_rows_match_hand_formulas(paper):
    rows = {r.name: r for r in paper.rows}
    assert rows["conv1"].macs == 112 * 112 * 64 * 3 * 7 * 7
    assert rows["conv2_reduce"].macs == 56 * 56 * 64 * 64
    assert rows["conv2"].macs == 56 * 56 * 192 * 64 * 9
    assert rows["fc"].macs == 1024 * 1000 and rows["fc"].params == 1024 * 1000 + 1000
    cin = 192
    for name, spec in INCEPTION_SPECS.items():
        side = {"3": 28, "4": 14, "5": 7}[name[0]]
        row = rows[f"inception{name}"]
        assert row.macs == inception_macs(cin, *spec, side), name
        assert row.widths == spec
        cin = spec[0] + spec[2] + spec[4] + spec[5]
        assert row.output == (cin, side, side)
    assert rows["pool2"].output == (192, 28, 28) and rows["pool2"].macs == 0
    assert rows["avgpool"].output == (1024,)


def test_torchvision_variant():
    s = build_summary("torchvision_googlenet", 1.0, 224, 1000)
    assert s.params == 6_624_904
    assert abs(s.macs / 1.50e9 - 1) < 0.01


# 100 -> conv 50 -> pool 25 -> pool 12 -> pool 6 -> pool 3 (pools round up, the conv down)
@pytest.mark.parametrize("arch,width,size,side", [("googlenet", 0.25, 64, 2), ("googlenet", 0.5, 100, 3),
                                                  ("torchvision_googlenet", 1.0, 96, 3)])
def test_every_parameter_is_in_a_row(arch, width, size, side):
    model = build_model(arch, 10, width=width, aux_logits=True)
    s = summarize(model, size, aux=True)
    assert s.params + s.aux_params == sum(p.numel() for p in model.parameters())
    assert s.num_classes == 10 and s.input_size == size
    last = [r for r in s.rows if r.name == "inception5b"][0]
    assert last.output[1:] == (side, side)


def test_too_small_input_is_an_input_error():
    with pytest.raises(InputError, match="too small"):
        build_summary("googlenet", 0.25, 16, 10)


def test_format_and_command(paper):
    text = format_summary(paper)
    assert "6,998,552 parameters" in text and "1.58" in text
    assert "64/96/128/16/32/32" in text
    result = CliRunner().invoke(summary_command, ["--width", "0.25", "--input-size", "64",
                                                  "--num-classes", "10"])
    assert result.exit_code == 0, result.output
    assert "googlenet width 0.25, input 64x64, 10 classes" in result.output
    assert "inception5b" in result.output and "total (inference)" in result.output

"""The one reading of a --device option."""
import pytest
import torch

from backbone.device import resolve_device
from backbone.errors import InputError


def test_auto_is_the_gpu_when_there_is_one_else_the_cpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device().type == expected


def test_named_devices_as_torch_reads_them():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_unknown_name_is_an_input_error():
    with pytest.raises(InputError, match="unknown device 'tpu7'"):
        resolve_device("tpu7")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_refused_up_front():
    with pytest.raises(InputError, match="no CUDA GPU"):
        resolve_device("cuda:1")

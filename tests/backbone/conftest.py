import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny forward passes: one thread avoids oversubscribing a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

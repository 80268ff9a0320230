"""Shared test setup. Its presence makes pytest put tests/ on sys.path (rootdir conftest,
prepend import mode), so helpers here such as cli_helpers import from every test folder."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the rest of the requesting module, restored after: tiny networks run
    faster on one thread than on two busy ones (no OpenMP spinning)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

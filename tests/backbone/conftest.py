import pytest


@pytest.fixture(autouse=True, scope="module")
def tiny_passes_on_one_thread(one_thread):
    """Every backbone test module runs its tiny forward passes on one thread (tests/conftest.py)."""

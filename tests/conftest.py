"""Shared test settings.

One torch thread per test: the suite runs on 2 shared cores, and tiny models
are slower with intra-op threads fighting each other than with one."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

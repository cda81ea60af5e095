"""Shared test settings.

One torch thread per test: the suite runs on 2 shared cores, and tiny models
are slower with intra-op threads fighting each other than with one."""
import logging
import os
import tempfile

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    # the compiled streaming kernel (sepcli.native) is built into a fresh cache
    # per test session rather than the user's ~/.cache/sep
    os.environ.setdefault("SEP_CACHE_DIR", tempfile.mkdtemp(prefix="sep-test-cache-"))


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def sep_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """caplog that also sees ``sepcli`` records when the CLI turned propagation off."""
    logger = logging.getLogger("sepcli")
    old = logger.level, logger.propagate
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # else root's copy of caplog.handler records everything twice
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)
        logger.setLevel(old[0])
        logger.propagate = old[1]

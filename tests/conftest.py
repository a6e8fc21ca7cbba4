import pytest
import torch


@pytest.fixture(autouse=True)
def torch_threads(request):
    """Every test runs with its module's TORCH_THREADS (default 2: the test machine has 2
    cores), restored afterwards, so that no module's choice leaks into another's tests (set at
    import time instead, the last module collected decided for the whole run)."""
    before = torch.get_num_threads()
    torch.set_num_threads(getattr(request.module, 'TORCH_THREADS', 2))
    yield
    torch.set_num_threads(before)


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: slower test (still part of the default run)')

import pytest
import torch

# the test machine has 2 cores shared by several jobs
torch.set_num_threads(2)


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: slower test (still part of the default run)')

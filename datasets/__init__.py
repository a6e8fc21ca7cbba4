"""Reading, preparing and augmenting change-detection data (interface: the project contract)."""
from .cd_dataset import ChangeDetectionDataset, read_label, read_pair
from .checks import DatasetError
from .presets import PRESETS, Preset, get_preset
from .sampler import TrainSampler
from .loader import default_num_workers, train_loader
from .transforms import (normalize_batch, normalize_pair, test_resize_pair, test_transform,
                         train_pipeline, train_transform)

__all__ = ['PRESETS', 'Preset', 'get_preset', 'ChangeDetectionDataset', 'DatasetError',
           'TrainSampler', 'ensure_demo', 'measure_loader_throughput', 'normalize_batch',
           'normalize_pair', 'read_pair', 'read_label', 'train_pipeline', 'train_transform',
           'test_resize_pair', 'test_transform', 'train_loader', 'default_num_workers']


# Lazy wrappers: importing .synthetic / .bench here would make `python -m datasets.synthetic`
# warn that the module was imported twice.
def ensure_demo(root, **kwargs):
    """Generate the demo set at `root` if absent (see datasets.synthetic.ensure_demo)."""
    from .synthetic import ensure_demo as _ensure_demo
    return _ensure_demo(root, **kwargs)


def measure_loader_throughput(preset=None, num_workers=2, n_batches=20, batch_size=16, **kwargs):
    """Train-pipeline pairs/s through a DataLoader (see datasets.bench.measure_loader_throughput)."""
    from .bench import measure_loader_throughput as _measure
    return _measure(preset, num_workers, n_batches, batch_size, **kwargs)

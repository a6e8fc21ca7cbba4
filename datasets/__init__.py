"""Reading, preparing and augmenting change-detection data (see the contract in README)."""
from .cd_dataset import ChangeDetectionDataset, read_label, read_pair
from .checks import DatasetError
from .presets import PRESETS, Preset, get_preset
from .sampler import TrainSampler
from .transforms import normalize_pair, test_transform, train_transform


def ensure_demo(root, **kwargs):
    """Generate the demo set at `root` if absent (see datasets.synthetic.ensure_demo)."""
    from .synthetic import ensure_demo as _ensure_demo   # lazy: keeps `-m datasets.synthetic` clean
    return _ensure_demo(root, **kwargs)

__all__ = ['PRESETS', 'Preset', 'get_preset', 'ChangeDetectionDataset', 'DatasetError',
           'ensure_demo', 'TrainSampler', 'normalize_pair', 'read_pair', 'read_label',
           'train_transform', 'test_transform']

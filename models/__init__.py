"""FHD change-detection network (MiT encoder + FHD decoder) and its weight loading."""
from .checkpoint import (CheckpointError, convert_state_dict, load_checkpoint,
                         original_key_map, read_checkpoint)
from .cost import benchmark_forward, count_params, model_cost
from .fhd import FHD, build_fhd
from .inference import for_inference
from .mit import MIT_VARIANTS, build_mit

__all__ = ['FHD', 'build_fhd', 'build_mit', 'MIT_VARIANTS', 'load_checkpoint', 'CheckpointError',
           'convert_state_dict', 'read_checkpoint', 'original_key_map', 'model_cost',
           'count_params', 'benchmark_forward', 'for_inference']

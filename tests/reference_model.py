"""The recorded reference case's model: mit_b2 FHD with fill-rule weights (shared by tests)."""
from pathlib import Path

from models import build_fhd
from models.checkpoint import convert_state_dict
from models.reference_case import filled_original_state_dict, load_manifest

FIXTURES = Path(__file__).parent / 'fixtures'
MANIFEST = load_manifest(FIXTURES / 'fhd_mit_b2_state_dict.json')


def filled_reference_model(seed):
    """Fill-rule weights on the ORIGINAL names, converted by the normal checkpoint converter."""
    model = build_fhd('mit_b2')
    converted, kind, dropped, _ = convert_state_dict(filled_original_state_dict(MANIFEST, seed),
                                                     model)
    assert kind == 'original' and dropped == ['decode_head.conv_seg.bias',
                                              'decode_head.conv_seg.weight']
    model.load_state_dict(converted, strict=True)
    return model.eval()

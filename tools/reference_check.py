"""The original's recorded reference case on any device (used by tools/gpu_check.sh).

    python tools/reference_check.py [--device cuda]

Fills the original key names by the fill rule, converts them with the checkpoint converter, runs
both execution paths in fp32 and compares head and final logits with the values recorded from the
original code (acceptance: max |new - ref| / max |ref| < 1e-4). Exit status 1 on a mismatch.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models import build_fhd  # noqa: E402
from models.checkpoint import convert_state_dict  # noqa: E402
from models.reference_case import filled_original_state_dict, load_manifest  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / 'tests' / 'fixtures'


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    args = p.parse_args(argv)
    device = torch.device(args.device)
    # TF32 would change the numbers by ~1e-3: the check is about fp32 equality
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    case = np.load(FIXTURES / 'fhd_public_case.npz')
    model = build_fhd('mit_b2')
    converted, _, _, _ = convert_state_dict(
        filled_original_state_dict(load_manifest(FIXTURES / 'fhd_mit_b2_state_dict.json'), seed=1), model)
    model.load_state_dict(converted)
    model.eval().to(device)
    x = torch.from_numpy(case['input']).to(device)
    ok = True
    for fast in (False, True):
        model.fast = fast
        with torch.no_grad():
            head, logits = model.forward_head(x).cpu(), model(x).cpu()
        for name, out in (('head_logits', head), ('logits', logits)):
            ref = torch.from_numpy(case[name])
            err = ((out - ref).abs().max() / ref.abs().max()).item()
            ok &= err < 1e-4
            print(f"{'fast' if fast else 'reference'} path on {device}: {name} rel err {err:.2e} "
                  f"{'ok' if err < 1e-4 else 'FAIL'}")
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())

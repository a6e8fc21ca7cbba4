"""Sliding-window inference (utils.inference) and the infer.py command line."""
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn

from utils.inference import pad_to_multiple, sliding_window_logits, tile_starts

REPO = Path(__file__).resolve().parents[1]


class PointwiseModel(nn.Module):
    """Stand-in whose output at a pixel depends only on that pixel: tiling must not change it.
    It also insists on the network's input rule (sides multiple of 32)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        assert x.shape[-2] % 32 == 0 and x.shape[-1] % 32 == 0, x.shape
        return self.conv(x)


class TileMeanModel(nn.Module):
    """Stand-in returning one constant per tile (its mean input): the worst case for seams."""

    def forward(self, x):
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return torch.cat([-mean, mean], dim=1).expand(-1, -1, *x.shape[-2:])


@pytest.fixture(scope='module')
def fhd_b0():
    from models import build_fhd
    torch.manual_seed(0)
    return build_fhd(backbone='mit_b0').eval()


def test_tile_starts_cover_the_image_with_the_requested_overlap():
    assert tile_starts(200, 256, 64) == [0]
    assert tile_starts(448, 256, 64) == [0, 192]
    starts = tile_starts(600, 256, 64)
    assert starts[0] == 0 and starts[-1] == 600 - 256
    assert all(b - a <= 256 - 64 for a, b in zip(starts, starts[1:]))   # overlap >= 64


def test_pad_to_multiple_pads_bottom_right_with_zeros():
    x = torch.ones(1, 6, 50, 70)
    y = pad_to_multiple(x)
    assert y.shape == (1, 6, 64, 96)
    assert torch.equal(y[..., :50, :70], x) and y[..., 50:, :].abs().sum() == 0
    assert pad_to_multiple(torch.ones(1, 6, 64, 32)).shape == (1, 6, 64, 32)


def test_tiled_equals_whole_for_a_pointwise_model_at_odd_sizes():
    model = PointwiseModel()
    x = torch.randn(1, 6, 70, 150)                 # not multiples of 32; several tiles each way
    with torch.no_grad():
        whole = model(pad_to_multiple(x))[..., :70, :150]
    tiled = sliding_window_logits(model, x, tile=64, overlap=16, batch_size=3)
    assert tiled.shape == (1, 2, 70, 150)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=1e-5)


def test_blend_is_a_linear_crossfade_without_steps():
    x = torch.zeros(1, 6, 32, 160)
    x[..., 96:] = 1.0                              # the two tiles see different content
    out = sliding_window_logits(TileMeanModel(), x, tile=96, overlap=32)[0, 1, 0]
    c1, c2 = x[..., :96].mean().item(), x[..., 64:].mean().item()
    assert out[:64].sub(c1).abs().max() < 1e-6 and out[96:].sub(c2).abs().max() < 1e-6
    steps = (out[1:] - out[:-1]).abs()
    assert steps.max() <= abs(c2 - c1) / 32 * 1.001      # hard stitching would jump by |c2 - c1|


def test_tile_covering_the_image_equals_whole_image_inference(fhd_b0):
    x = torch.randn(2, 6, 64, 96)
    with torch.inference_mode():
        whole = fhd_b0(x)
    assert torch.equal(sliding_window_logits(fhd_b0, x, tile=128), whole)
    # Not a multiple of 32: padded to 64x96 with zeros, run once, cropped back.
    odd = x[:1, :, :50, :70]
    with torch.inference_mode():
        expected = fhd_b0(pad_to_multiple(odd))[..., :50, :70]
    got = sliding_window_logits(fhd_b0, odd, tile=128)
    assert got.shape == (1, 2, 50, 70) and torch.equal(got, expected)


def test_no_seam_on_a_two_tile_image(fhd_b0):
    torch.manual_seed(1)
    x = torch.randn(1, 6, 64, 160)                 # tiles at x=0 and x=64, overlap 32
    with torch.inference_mode():
        whole = fhd_b0(x)
        left, right = fhd_b0(x[..., :96]), fhd_b0(x[..., 64:])
    tiled = sliding_window_logits(fhd_b0, x, tile=96, overlap=32)
    hard = torch.cat([left[..., :80], right[..., 16:]], dim=-1)   # cut in the middle of the overlap

    def column_steps(logits):
        return (logits[..., 1:] - logits[..., :-1]).abs().amax(dim=(0, 1, 2))

    natural = column_steps(whole).max()            # how much the model's own logits vary per column
    assert column_steps(tiled)[60:100].max() <= 1.5 * natural
    assert column_steps(hard)[79] > 1.5 * natural  # the check would catch a hard seam


# ---------------------------------------------------------------- command line

def _write_pair(folder, name, a, b):
    for sub, img in (('A', a), ('B', b)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / sub / name), img)


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    from models import build_fhd
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('ckpt') / 'fhd_b0.pth'
    torch.save({'meta': {'backbone': 'mit_b0'}, 'state_dict': build_fhd(backbone='mit_b0').state_dict()},
               path)
    return path


def test_cli_writes_masks_probabilities_and_overlays(tmp_path, checkpoint):
    rng = np.random.default_rng(0)
    pairs = tmp_path / 'pairs'
    sizes = {'small.png': (40, 70), 'wide.png': (64, 200)}    # padded once / two-by-one tiles
    for name, (h, w) in sizes.items():
        _write_pair(pairs, name, rng.integers(0, 256, (h, w, 3), np.uint8),
                    rng.integers(0, 256, (h, w, 3), np.uint8))
    out = tmp_path / 'out'
    cmd = [sys.executable, str(REPO / 'infer.py'), '--checkpoint', str(checkpoint), '--backbone', 'mit_b0',
           '--input-dir', str(pairs), '--output-dir', str(out), '--tile', '96', '--overlap', '32',
           '--prob', '--overlay', '--device', 'cpu']
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for name, (h, w) in sizes.items():
        mask = cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED)
        prob = cv2.imread(str(out / 'prob' / name), cv2.IMREAD_UNCHANGED)
        over = cv2.imread(str(out / 'overlay' / name), cv2.IMREAD_UNCHANGED)
        assert mask.shape == prob.shape == (h, w) and over.shape == (h, w, 3)
        assert set(np.unique(mask)) <= {0, 255}
        # mask = argmax, prob = softmax of the change class: they agree away from 0.5
        assert not np.any((mask == 255) & (prob < 127)) and not np.any((mask == 0) & (prob > 128))
    assert not [p for p in out.rglob('*') if p.suffix == '.tmp']


def test_cli_rejects_pairs_of_different_sizes(tmp_path, checkpoint, capsys):
    import infer
    a, b = tmp_path / 'a.png', tmp_path / 'b.png'
    cv2.imwrite(str(a), np.zeros((32, 32, 3), np.uint8))
    cv2.imwrite(str(b), np.zeros((32, 48, 3), np.uint8))
    rc = infer.main(['--checkpoint', str(checkpoint), '--backbone', 'mit_b0', '--a', str(a), '--b', str(b),
                     '--out', str(tmp_path / 'o.png'), '--device', 'cpu'])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith('error: ') and 'size mismatch' in err and err.count('\n') == 1
    assert not (tmp_path / 'o.png').exists()


def test_cli_missing_checkpoint_and_bad_tile(tmp_path, capsys):
    import infer
    args = ['--a', 'a.png', '--b', 'b.png', '--out', str(tmp_path / 'o.png'), '--device', 'cpu']
    assert infer.main(['--checkpoint', str(tmp_path / 'none.pth')] + args) == 2
    assert 'checkpoint not found' in capsys.readouterr().err
    assert infer.main(['--checkpoint', 'x.pth', '--tile', '100'] + args) == 2
    assert 'multiple of 32' in capsys.readouterr().err


def test_cli_single_pair_writes_side_files(tmp_path, checkpoint):
    import infer
    rng = np.random.default_rng(1)
    a, b = tmp_path / 'a.png', tmp_path / 'b.jpg'
    cv2.imwrite(str(a), rng.integers(0, 256, (40, 52, 3), np.uint8))
    cv2.imwrite(str(b), rng.integers(0, 256, (40, 52, 3), np.uint8))
    out = tmp_path / 'res' / 'change.png'
    assert infer.main(['--checkpoint', str(checkpoint), '--backbone', 'mit_b0', '--a', str(a), '--b', str(b),
                       '--out', str(out), '--prob', '--overlay', '--device', 'cpu']) == 0
    assert cv2.imread(str(out), cv2.IMREAD_UNCHANGED).shape == (40, 52)
    assert cv2.imread(str(tmp_path / 'res' / 'change_prob.png'), cv2.IMREAD_UNCHANGED).shape == (40, 52)
    assert cv2.imread(str(tmp_path / 'res' / 'change_overlay.png')).shape == (40, 52, 3)

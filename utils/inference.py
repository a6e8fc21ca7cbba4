"""Inference helpers: device/AMP selection, padding to a multiple of 32, sliding-window logits.

The network accepts any input whose sides are multiples of 32. Large images are cut into
overlapping tiles whose logits are blended with a window weight that fades out towards the
tile borders, so neighbouring tiles cross-fade linearly in their overlap and no seam appears.
"""
import contextlib
import math

import torch
import torch.nn.functional as F

SIZE_DIVISOR = 32


def resolve_device(name='auto'):
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if name == 'cuda' and not torch.cuda.is_available():
        raise ValueError('--device cuda was asked for, but no CUDA device is available')
    if name not in ('cpu', 'cuda'):
        raise ValueError(f'--device must be auto, cpu or cuda, got {name!r}')
    return torch.device(name)


def autocast_context(device, amp='none'):
    """Mixed precision for the forward pass; the original evaluated under fp16 autocast on GPU."""
    if amp == 'none':
        return contextlib.nullcontext()
    dtypes = {'fp16': torch.float16, 'bf16': torch.bfloat16}
    if amp not in dtypes:
        raise ValueError(f'--amp must be none, fp16 or bf16, got {amp!r}')
    return torch.autocast(device_type=device.type, dtype=dtypes[amp])


def pad_to_multiple(img, divisor=SIZE_DIVISOR, min_size=(0, 0)):
    """Zero-pad (B,C,H,W) at the bottom/right to a multiple of `divisor` and at least min_size.

    Zero in normalized space is the dataset mean colour, the value the original padded
    training crops with, which the model has learnt to read as "no change".
    """
    h, w = img.shape[-2:]
    new_h = max(math.ceil(h / divisor) * divisor, min_size[0])
    new_w = max(math.ceil(w / divisor) * divisor, min_size[1])
    if (new_h, new_w) == (h, w):
        return img
    return F.pad(img, (0, new_w - w, 0, new_h - h))


def tile_starts(length, tile, overlap):
    """Start offsets covering [0, length) with windows of `tile`, stepping tile - overlap;
    the last window is aligned to the end (it may overlap its neighbour more)."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def window_weight_1d(size, ramp, device=None):
    """1 in the middle, falling linearly to ~0 over `ramp` pixels at both ends (never 0,
    so image-border pixels covered by one tile only still get a weight)."""
    if ramp <= 0:
        return torch.ones(size, device=device)
    pos = torch.arange(size, device=device, dtype=torch.float32) + 0.5
    dist = torch.minimum(pos, size - pos)       # distance to the nearer tile border
    return (dist / ramp).clamp(max=1.0)


def window_weight(tile_h, tile_w, overlap, device=None):
    return (window_weight_1d(tile_h, overlap, device)[:, None]
            * window_weight_1d(tile_w, overlap, device)[None, :])


@torch.inference_mode()
def sliding_window_logits(model, img, tile=256, overlap=64, batch_size=4, amp='none'):
    """Logits (B,K,H,W) in float32 for a normalized (B,6,H,W) image of any size.

    The image is padded to a multiple of 32 (and cropped back); if one tile covers it the
    model runs once on the whole image, otherwise on overlapping tiles whose logits are
    blended with `window_weight`.
    """
    if tile % SIZE_DIVISOR or tile <= 0:
        raise ValueError(f'--tile must be a positive multiple of {SIZE_DIVISOR}, got {tile}')
    if not 0 <= overlap < tile:
        raise ValueError(f'--overlap must be in [0, tile), got {overlap} for tile {tile}')
    h, w = img.shape[-2:]
    padded = pad_to_multiple(img)
    ph, pw = padded.shape[-2:]
    autocast = autocast_context(padded.device, amp)
    if ph <= tile and pw <= tile:
        with autocast:
            return model(padded).float()[..., :h, :w]

    tile_h, tile_w = min(tile, ph), min(tile, pw)
    boxes = [(y, x) for y in tile_starts(ph, tile_h, overlap) for x in tile_starts(pw, tile_w, overlap)]
    weight = window_weight(tile_h, tile_w, overlap, padded.device)
    logits_sum = None
    weight_sum = torch.zeros(ph, pw, device=padded.device)
    for n in range(padded.shape[0]):
        for i in range(0, len(boxes), batch_size):
            chunk = boxes[i:i + batch_size]
            crops = torch.stack([padded[n, :, y:y + tile_h, x:x + tile_w] for y, x in chunk])
            with autocast:
                out = model(crops).float()
            if logits_sum is None:
                logits_sum = torch.zeros(padded.shape[0], out.shape[1], ph, pw, device=padded.device)
            for (y, x), tile_logits in zip(chunk, out):
                logits_sum[n, :, y:y + tile_h, x:x + tile_w] += tile_logits * weight
                if n == 0:
                    weight_sum[y:y + tile_h, x:x + tile_w] += weight
    return (logits_sum / weight_sum)[..., :h, :w]

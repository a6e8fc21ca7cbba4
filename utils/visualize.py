"""Pictures of predictions (all BGR uint8, as OpenCV writes them) and lossless atomic writes."""
import os
import tempfile

import cv2
import numpy as np

# BGR colours of the error map.
TP_COLOR = (255, 255, 255)   # white: change found
TN_COLOR = (0, 0, 0)         # black: no change, none predicted
FP_COLOR = (0, 0, 255)       # red: false alarm
FN_COLOR = (0, 255, 0)       # green: missed change


def to_numpy(x):
    return x.detach().cpu().numpy() if hasattr(x, 'detach') else np.asarray(x)


def mask_to_png(pred):
    """{0,1} (or any non-zero = change) HxW -> uint8 0/255."""
    return (to_numpy(pred) != 0).astype(np.uint8) * 255


def error_map(pred, label):
    """HxWx3 BGR: TP white, TN black, FP red, FN green."""
    pred, label = to_numpy(pred) != 0, to_numpy(label) != 0
    out = np.zeros(pred.shape + (3,), np.uint8)
    out[pred & label] = TP_COLOR
    out[pred & ~label] = FP_COLOR
    out[~pred & label] = FN_COLOR
    return out


def _as_bgr(img):
    img = to_numpy(img)
    if img.ndim == 2:
        img = mask_to_png(img)
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    return img


def panel(*images, gap=4):
    """Images side by side (e.g. A | B | label | prediction), separated by grey gaps.
    2-D arrays are treated as masks (non-zero = white)."""
    images = [_as_bgr(img) for img in images]
    height = max(img.shape[0] for img in images)
    parts = []
    for i, img in enumerate(images):
        if img.shape[0] != height:
            img = cv2.copyMakeBorder(img, 0, height - img.shape[0], 0, 0, cv2.BORDER_CONSTANT,
                                     value=(128, 128, 128))
        if i:
            parts.append(np.full((height, gap, 3), 128, np.uint8))
        parts.append(img)
    return np.concatenate(parts, axis=1)


def overlay(image_bgr, mask, color=(0, 0, 255), alpha=0.5):
    """Tint the changed pixels of `image_bgr` with `color` (default red)."""
    out = image_bgr.copy()
    mask = to_numpy(mask) != 0
    tint = np.asarray(color, np.float32)
    out[mask] = (out[mask].astype(np.float32) * (1 - alpha) + tint * alpha).round().astype(np.uint8)
    return out


def imwrite_atomic(path, img):
    """Write a PNG (lossless whatever the requested name: the suffix is forced to .png by the
    callers) via a temp file in the same folder and a rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    ok, buf = cv2.imencode('.png', img)
    if not ok:
        raise OSError(f'could not encode image for {path}')
    fd, tmp = tempfile.mkstemp(prefix='.img.', suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(buf.tobytes())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise

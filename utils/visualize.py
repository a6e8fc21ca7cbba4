"""Pictures of predictions (all BGR uint8, as OpenCV writes them) and lossless atomic writes."""
import cv2
import numpy as np

from utils.fileio import atomic_path

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
    ok, buf = cv2.imencode('.png', img)
    if not ok:
        raise OSError(f'could not encode image for {path}')
    with atomic_path(path) as tmp, open(tmp, 'wb') as f:
        f.write(buf.tobytes())


def loss_curve(iters, losses, size=(640, 320), title='training loss'):
    """A plain line plot (BGR uint8) of loss against iteration, drawn with OpenCV."""
    w, h = size
    left, right, top, bottom = 60, 20, 30, 40
    img = np.full((h, w, 3), 255, np.uint8)
    iters, losses = np.asarray(iters, np.float64), np.asarray(losses, np.float64)
    x0, x1 = 0.0, max(float(iters.max()), 1.0)
    y0, y1 = 0.0, max(float(losses.max()) * 1.05, 1e-6)
    px = left + (iters - x0) / (x1 - x0) * (w - left - right)
    py = h - bottom - (losses - y0) / (y1 - y0) * (h - top - bottom)
    cv2.rectangle(img, (left, top), (w - right, h - bottom), (0, 0, 0), 1)
    for frac in (0.0, 0.5, 1.0):
        y = int(h - bottom - frac * (h - top - bottom))
        cv2.putText(img, f'{y0 + frac * (y1 - y0):.2f}', (5, y + 4), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4, (0, 0, 0), 1, cv2.LINE_AA)
        x = int(left + frac * (w - left - right))
        cv2.putText(img, f'{int(x0 + frac * (x1 - x0))}', (x - 10, h - bottom + 18),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    pts = np.stack([px, py], 1).round().astype(np.int32)
    cv2.polylines(img, [pts], False, (200, 80, 0), 2, cv2.LINE_AA)
    cv2.putText(img, title, (left, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, 'iteration', (w // 2 - 30, h - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                (0, 0, 0), 1, cv2.LINE_AA)
    return img

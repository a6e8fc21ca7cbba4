"""A generated change-detection dataset ('demo') in the real datasets' layout and formats.

Each scene is a patch of lightly textured ground with roads, vegetation and buildings (roofs
with a gable shading and a cast shadow). The true changes are buildings that appear or
disappear between the two dates; the label is their roof footprint. Distractors that are NOT
changes: unchanged buildings, shadows, vegetation colour, sensor noise and cars on roads (plus
the training pipeline's independent photometric distortion of each date: brightness, contrast,
saturation and hue).

The set is meant to be learnt from scratch (no ImageNet weights offline) in the demo's few
hundred CPU iterations, so roofs contrast clearly with the ground and ~11 % of the pixels
change. Validation F1 after 150 iterations on whole tiles: 0.43 for the first version
(darker roofs, twice the ground texture, seasonal vegetation, a 1-2 px misregistration of B,
bare construction sites before new buildings, a global colour shift of B, 4-11 building tries
per tile), 0.59 without the first five of these, 0.67 without all six and with 8-17 tries
(0.59 with the 8-17 tries but the colour shift kept). The old random draws are kept where a
distractor was removed.

    python -m datasets.synthetic --out data/demo [--seed 0] [--n-train 400 --n-val 50
                                                   --n-test 100] [--size 128] [--force]
"""
import argparse
import fcntl
import os
import shutil
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

DEFAULT_COUNTS = {'train': 400, 'val': 50, 'test': 100}
SOIL = [(95, 120, 140), (80, 105, 125), (120, 140, 150), (70, 110, 100)]    # BGR ground tints
ROOFS = [(40, 40, 200), (40, 140, 230), (230, 230, 235), (200, 120, 40), (60, 200, 220),
         (210, 200, 120)]
LEAF_SUMMER, LEAF_AUTUMN = np.array([50, 110, 60.]), np.array([60, 130, 150.])


def _smooth_noise(rng, size, cells, channels=1):
    grid = rng.normal(size=(cells, cells, channels)).astype(np.float32)
    out = cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
    return out.reshape(size, size, channels)


def _rotated_rect(cx, cy, w, h, angle):
    return cv2.boxPoints(((cx, cy), (w, h), angle)).astype(np.int32)


def make_scene(rng, size):
    """Random scene description: shared ground, roads, vegetation, buildings with status."""
    ground = np.array(SOIL[rng.integers(len(SOIL))], np.float32)
    texture = 0.5 * (12 * _smooth_noise(rng, size, max(size // 24, 2), 1)      # brightness
                     + 4 * _smooth_noise(rng, size, max(size // 24, 2), 3)     # slight tint
                     + 6 * _smooth_noise(rng, size, max(size // 6, 2), 1)
                     + 3 * rng.standard_normal((size, size, 1), np.float32))
    scene = {'size': size, 'ground': ground + texture, 'roads': [], 'trees': [], 'buildings': []}
    occupied = np.zeros((size, size), np.uint8)
    for _ in range(rng.integers(0, 3)):
        p0, p1 = rng.integers(0, size, 2), rng.integers(0, size, 2)
        if rng.random() < 0.5:       # mostly axis-aligned roads, crossing the tile
            p0, p1 = (p0[0], 0), (p1[0] + rng.integers(-10, 11), size - 1)
        width = int(rng.integers(4, 9))
        scene['roads'].append((tuple(map(int, p0)), tuple(map(int, p1)), width,
                               float(rng.uniform(105, 150))))
        cv2.line(occupied, tuple(map(int, p0)), tuple(map(int, p1)), 1, width + 4)
    for _ in range(rng.integers(2, 9)):
        centre = tuple(int(v) for v in rng.integers(0, size, 2))
        axes = tuple(int(v) for v in rng.integers(3, max(size // 8, 5), 2))
        scene['trees'].append((centre, axes, int(rng.integers(0, 180))))
    angle = float(rng.choice([0.0, rng.uniform(-30, 30)]))
    sun = rng.uniform(2, 5, 2) * rng.choice([-1, 1], 2)       # shadow offset (dx, dy)
    no_change = rng.random() < 0.1
    # Buildings of 10-30 % of the tile side (13-38 px at 128): at the model's 1/4-resolution
    # output a building is then at least 3 cells wide, as LEVIR's buildings are at 0.5 m/px.
    for _ in range(rng.integers(8, 18)):      # placement tries; overlapping ones are skipped
        w, h = rng.integers(max(size // 10, 4), max(size * 3 // 10, 6) + 1, 2)
        cx, cy = rng.integers(w // 2, size - w // 2), rng.integers(h // 2, size - h // 2)
        roof = _rotated_rect(float(cx), float(cy), float(w), float(h), angle)
        footprint = np.zeros_like(occupied)
        cv2.fillPoly(footprint, [roof], 1)
        grown = cv2.dilate(footprint, np.ones((5, 5), np.uint8))
        if (grown & occupied).any():
            continue
        occupied |= grown
        status = 'both' if no_change else rng.choice(['both', 'new', 'gone'], p=[.15, .5, .35])
        scene['buildings'].append({
            'roof': roof, 'shadow': (roof + np.round(sun)).astype(np.int32),
            'colour': np.array(ROOFS[rng.integers(len(ROOFS))], np.float32)
            * rng.uniform(0.85, 1.1), 'ridge_w': bool(w > h), 'status': str(status)})
        rng.random()   # (the earlier version's construction-site draw)
    scene['cars'] = [[(int(x), int(y)) for x, y in rng.integers(0, size, (rng.integers(0, 6), 2))]
                     for _ in range(2)]
    return scene


def render(scene, date, rng):
    """Draw the scene at date 0 (A) or 1 (B) -> BGR uint8 image."""
    size = scene['size']
    img = scene['ground'].copy()
    for p0, p1, width, grey in scene['roads']:
        cv2.line(img, p0, p1, (grey, grey, grey + 3), width)
        for x, y in scene['cars'][date]:      # cars: transient, on the road only
            if cv2.pointPolygonTest(np.array([p0, p1], np.float32).reshape(-1, 1, 2),
                                    (x, y), True) > -width / 2:
                cv2.rectangle(img, (x, y), (x + 3, y + 1), tuple(float(v) for v in rng.uniform(30, 230, 3)), -1)
    rng.uniform(0, 1) if date == 1 else rng.uniform(0, 0.3)   # (the earlier seasonal draw)
    season = rng.uniform(0, 0.3)
    leaf = (1 - season) * LEAF_SUMMER + season * LEAF_AUTUMN
    for centre, axes, rot in scene['trees']:
        crown = np.zeros((size, size), np.uint8)
        cv2.ellipse(crown, centre, axes, rot, 0, 360, 1, -1)
        img[crown > 0] = leaf * rng.uniform(0.8, 1.1) + scene['ground'][crown > 0] * 0.15 - 15
    for b in scene['buildings']:
        present = b['status'] == 'both' or b['status'] == ('gone' if date == 0 else 'new')
        if not present:
            continue
        shadow = np.zeros((size, size), np.uint8)
        cv2.fillPoly(shadow, [b['shadow']], 1)
        img[shadow > 0] *= 0.45
        cv2.fillPoly(img, [b['roof']], tuple(map(float, b['colour'])))
        r = b['roof']                       # gable: one half of the roof slightly darker
        half = np.array([r[0], r[1], (r[1] + r[2]) // 2, (r[3] + r[0]) // 2]) if b['ridge_w'] \
            else np.array([r[0], (r[0] + r[1]) // 2, (r[2] + r[3]) // 2, r[3]])
        cv2.fillPoly(img, [half.astype(np.int32)], tuple(map(float, b['colour'] * 0.8)))
    img = cv2.GaussianBlur(img, (3, 3), 0.7)
    if date == 1:
        rng.uniform(0.88, 1.12, 3), rng.uniform(-20, 20)   # (the earlier global colour shift)
        rng.integers(-2, 3, 2)    # (the earlier version's misregistration draw)
    img += rng.standard_normal(img.shape, np.float32) * np.float32(rng.uniform(2, 6))
    return np.clip(img, 0, 255).astype(np.uint8)


def change_mask(scene):
    """0/255 uint8 footprint of the buildings that appear or disappear."""
    mask = np.zeros((scene['size'],) * 2, np.uint8)
    for b in scene['buildings']:
        if b['status'] != 'both':
            cv2.fillPoly(mask, [b['roof']], 255)
    return mask


def make_pair(seed, split_id, index, size):
    rng = np.random.default_rng([seed, split_id, index])
    scene = make_scene(rng, size)
    return render(scene, 0, rng), render(scene, 1, rng), change_mask(scene)


def generate(out, seed=0, counts=None, size=128, img_suffix='.png'):
    """Write <out>/{train,val,test}/{A,B,label}/<split>_<i>.png; deterministic per seed.

    img_suffix '.jpg' writes A and B as JPEG (quality 90; labels stay PNG), as DSIFN's are.
    """
    counts = counts or DEFAULT_COUNTS
    params = {'.png': [cv2.IMWRITE_PNG_COMPRESSION, 1],      # fast; size is minor
              '.jpg': [cv2.IMWRITE_JPEG_QUALITY, 90]}[img_suffix]
    for split_id, (split, n) in enumerate(counts.items()):
        for folder in ('A', 'B', 'label'):
            os.makedirs(os.path.join(out, split, folder), exist_ok=True)
        for i in range(n):
            a, b, label = make_pair(seed, split_id, i, size)
            stem = os.path.join(out, split, '{}', f'{split}_{i:04d}')
            cv2.imwrite(stem.format('A') + img_suffix, a, params)
            cv2.imwrite(stem.format('B') + img_suffix, b, params)
            cv2.imwrite(stem.format('label') + '.png', label, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    return out


def ensure_demo(root, seed=0, counts=None, size=128):
    """Generate the demo set at `root` unless it exists; safe under concurrent callers."""
    root = Path(root)
    if root.exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f'.{root.name}.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)      # one process generates, the others wait
        if not root.exists():
            print(f'generating the demo dataset in {root} ...', file=sys.stderr)
            _generate_atomic(root, seed, counts, size)
    return root


def _generate_atomic(root, seed, counts, size):
    """Generate into a temporary sibling folder, then rename it to `root`."""
    tmp = tempfile.mkdtemp(prefix=f'.{root.name}.tmp-', dir=root.parent)
    try:
        generate(tmp, seed, counts, size)
        os.chmod(tmp, 0o755)
        if root.exists():                     # --force: swap the old set out
            old = tempfile.mkdtemp(prefix=f'.{root.name}.old-', dir=root.parent)
            os.replace(root, os.path.join(old, 'x'))
            os.replace(tmp, root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', default='data/demo')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--size', type=int, default=128)
    for split, n in DEFAULT_COUNTS.items():
        parser.add_argument(f'--n-{split}', type=int, default=n)
    parser.add_argument('--force', action='store_true', help='replace an existing output')
    args = parser.parse_args(argv)
    out = Path(args.out)
    counts = {'train': args.n_train, 'val': args.n_val, 'test': args.n_test}
    if args.size < 32 or min(counts.values()) < 1:
        print('error: --size must be >= 32 and every --n-* >= 1', file=sys.stderr)
        return 2
    if out.exists() and not args.force:
        print(f'error: {out} already exists (use --force to replace it)', file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    _generate_atomic(out, args.seed, counts, args.size)
    print(f"wrote {out}: " + ', '.join(f'{s} {n}' for s, n in counts.items())
          + f' pairs of {args.size}x{args.size}')
    return 0


if __name__ == '__main__':
    sys.exit(main())

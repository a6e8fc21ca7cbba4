"""`bash train_eval.sh demo` leaves the repository's tracked files alone: its pictures go to the
output folder, assets/ changes only when asked for (tiny settings, mit_b0, 2 iterations)."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parents[1]
TINY_TRAIN = ('--backbone mit_b0 --max-iters 2 --batch-size 2 --crop-size 64 --pretrained none '
              '--device cpu')


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob('*'))}


def run_demo(tmp_path, **env):
    from datasets.synthetic import generate
    if not (tmp_path / 'demo').exists():
        generate(str(tmp_path / 'demo'), seed=3, counts={'train': 4, 'val': 2, 'test': 2}, size=64)
    inherited = {k: v for k, v in os.environ.items() if k not in ('ASSETS_DIR', 'SEED')}
    env = dict(inherited, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO), PYTHON=sys.executable,
               DATA_ROOT=str(tmp_path), WORK_ROOT=str(tmp_path / 'w'),
               OUTPUT_ROOT=str(tmp_path / 'o'), TRAIN_ARGS=TINY_TRAIN,
               EVAL_ARGS='--backbone mit_b0 --device cpu --num-workers 0', **env)
    proc = subprocess.run(['bash', str(REPO / 'train_eval.sh'), 'demo'], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_demo_writes_pictures_to_the_output_folder_not_assets(tmp_path):
    before = digest(REPO / 'assets')
    proc = run_demo(tmp_path)
    out = tmp_path / 'o' / 'demo'
    grid = cv2.imread(str(out / 'demo_results.png'))
    assert grid is not None and grid.shape[1] == 5 * 64 + 4 * 4      # A | B | label | pred | error
    assert cv2.imread(str(out / 'demo_loss.png')) is not None
    assert (out / 'label' / 'metrics.json').is_file() and (out / 'label' / 'per_image.csv').is_file()
    assert digest(REPO / 'assets') == before
    assert 'finished: demo in ' in proc.stdout


def test_demo_assets_on_purpose_and_other_seeds_apart(tmp_path):
    assets = tmp_path / 'assets'
    run_demo(tmp_path, ASSETS_DIR=str(assets), SEED='7')
    assert sorted(p.name for p in assets.glob('*.png')) == ['demo_loss.png', 'demo_results.png']
    assert (tmp_path / 'w' / 'fhd.demo.seed7' / 'latest.pth').is_file()
    assert (tmp_path / 'o' / 'demo.seed7' / 'label' / 'metrics.json').is_file()
    assert not (tmp_path / 'w' / 'fhd.demo').exists()

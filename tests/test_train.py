"""train.py on CPU with tiny generated data: learning, resume equality, kill + resume, DDP, NaN stop."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import cv2
import pytest
import torch

import train
from utils.checkpoint import find_resume_checkpoint, link_atomic, save_atomic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--backbone', 'mit_b0', '--batch-size', '2', '--crop-size', '64', '--pretrained', 'none',
        '--device', 'cpu', '--deterministic', '--log-interval', '1']


def _env():
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT)
    env.pop('RANK', None)
    env.pop('WORLD_SIZE', None)
    return env


def run_train(*args, check=True, timeout=300):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'train.py'), *args], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f'train.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}')
    return proc


def load_weights(path):
    return torch.load(path, map_location='cpu', weights_only=True)['state_dict']


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f'{k} differs'


@pytest.fixture
def one_thread():
    """In-process training: 1 thread (2 spinning threads crawl on a shared 2-core box) and no
    leak of train.py's global deterministic-mode switch into other tests."""
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(det)


@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory):
    from datasets.synthetic import generate
    root = tmp_path_factory.mktemp('data') / 'demo'
    generate(str(root), seed=3, counts={'train': 8, 'val': 2, 'test': 2}, size=64)
    return str(root)


@pytest.fixture(scope='module')
def reference_run(tiny_data, tmp_path_factory):
    """An uninterrupted 8-iteration run, checkpoints every 2 iterations, validation every 4."""
    work = str(tmp_path_factory.mktemp('ref'))
    run_train('--dataset', 'demo', '--data-root', tiny_data, '--work-dir', work, '--max-iters', '8',
              '--checkpoint-interval', '2', '--eval-interval', '4', *TINY)
    return work


def test_reference_run_outputs(reference_run, tiny_data):
    names = set(os.listdir(reference_run))
    assert {'iter_2.pth', 'iter_4.pth', 'iter_6.pth', 'iter_8.pth', 'latest.pth', 'best.pth',
            'train.log', 'train.jsonl', 'final_metrics.json', 'config.json'} <= names
    assert not [n for n in names if n.endswith('.tmp')]
    # latest.pth is a complete file with the newest weights (not a symlink)
    latest = os.path.join(reference_run, 'latest.pth')
    assert not os.path.islink(latest)
    ckpt = torch.load(latest, map_location='cpu', weights_only=True)
    assert ckpt['meta']['iter'] == 8 and ckpt['meta']['backbone'] == 'mit_b0'
    # what a resume must share with this run (the demo preset's scale 128 / crop 64)
    assert {k: ckpt['meta'][k] for k in ('dataset', 'data_root', 'crop', 'scale', 'batch_size',
                                         'lr', 'world_size')} == dict(
        dataset='demo', data_root=os.path.realpath(tiny_data), crop=64,
        scale=128, batch_size=2, lr=train.PRESET_SCHEDULES['demo']['lr'], world_size=1)
    assert {'torch', 'numpy', 'python'} <= set(ckpt['rng'])
    assert len(ckpt['optimizer']['param_groups']) == 3
    assert_same_weights(ckpt['state_dict'], load_weights(os.path.join(reference_run, 'iter_8.pth')))
    records = [json.loads(line) for line in open(os.path.join(reference_run, 'train.jsonl'))]
    train_recs = [r for r in records if r['mode'] == 'train']
    assert [r['iter'] for r in train_recs] == list(range(1, 9))
    assert all({'loss', 'lr', 'time', 'memory'} <= set(r) for r in train_recs)
    # the logged lr is the closed form (the demo preset's lr and warmup, max 8)
    demo = train.PRESET_SCHEDULES['demo']
    lr, warmup = demo['lr'], demo['warmup_iters']
    assert train_recs[3]['lr'] == pytest.approx(lr * (1 - 3 / 8) * (1 - (1 - 3 / warmup) * (1 - 1e-6)))
    assert [r['iter'] for r in records if r['mode'] == 'val'] == [4, 8]
    final = json.load(open(os.path.join(reference_run, 'final_metrics.json')))
    assert final['iters'] == 8 and 'f1' in final['val'] and final['best']['iter'] in (4, 8)


def test_resume_of_another_run_is_a_one_line_error(reference_run, tiny_data, tmp_path, capsys,
                                                   one_thread):
    ckpt = os.path.join(reference_run, 'iter_4.pth')
    base = ['--dataset', 'demo', '--data-root', tiny_data, '--work-dir', str(tmp_path),
            '--max-iters', '8', '--resume', ckpt, *TINY]
    for extra, message in ((['--batch-size', '1'], 'batch_size was 2, now 1'),
                           (['--lr', '0.001'], f"lr was {train.PRESET_SCHEDULES['demo']['lr']}, now 0.001"),
                           (['--crop-size', '32'], 'crop was 64, now 32; scale was 128, now 64')):
        rc = train.main(base + extra)
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and 'Traceback' not in err, err
        assert err.startswith(f'error: --resume {ckpt}: not the same run (') and message in err, err
    other = tmp_path / 'other_data'
    import shutil
    shutil.copytree(tiny_data, other)
    rc = train.main(base[:3] + [str(other)] + base[4:])
    err = capsys.readouterr().err
    assert rc == 2 and (f"data_root was '{os.path.realpath(tiny_data)}', "
                        f"now '{os.path.realpath(other)}'") in err


def test_eval_reads_the_training_geometry(reference_run, tiny_data, tmp_path):
    from datasets import get_preset
    from utils.checkpoint import read_meta, with_training_geometry
    custom = get_preset('custom', tiny_data)
    assert (custom.scale, custom.crop) == (256, 256)
    trained = with_training_geometry(custom, os.path.join(reference_run, 'iter_8.pth'))
    assert (trained.scale, trained.crop, trained.root) == (128, 64, custom.root)
    torch.save({'meta': {'iter': 1}, 'state_dict': {}}, tmp_path / 'release.pth')   # no geometry
    assert with_training_geometry(custom, tmp_path / 'release.pth') == custom
    (tmp_path / 'junk.pth').write_bytes(b'not a checkpoint')
    assert read_meta(tmp_path / 'junk.pth') is None
    assert with_training_geometry(custom, tmp_path / 'junk.pth') == custom


def test_resume_from_checkpoint_is_bit_identical(reference_run, tiny_data, tmp_path):
    # A fresh process continues from iter_4.pth to 8 and must land on the same weights.
    run_train('--dataset', 'demo', '--data-root', tiny_data, '--work-dir', str(tmp_path),
              '--max-iters', '8', '--checkpoint-interval', '2', '--eval-interval', '4',
              '--resume', os.path.join(reference_run, 'iter_4.pth'), *TINY)
    assert not os.path.exists(tmp_path / 'iter_4.pth')
    assert_same_weights(load_weights(tmp_path / 'iter_8.pth'),
                        load_weights(os.path.join(reference_run, 'iter_8.pth')))
    # optimizer state too (Adam moments and step counts)
    a = torch.load(tmp_path / 'iter_8.pth', weights_only=True)['optimizer']['state']
    b = torch.load(os.path.join(reference_run, 'iter_8.pth'), weights_only=True)['optimizer']['state']
    assert all(torch.equal(a[k]['exp_avg'], b[k]['exp_avg']) for k in a)


def test_sigkill_then_resume_auto(reference_run, tiny_data, tmp_path):
    args = [sys.executable, os.path.join(ROOT, 'train.py'), '--dataset', 'demo', '--data-root',
            tiny_data, '--work-dir', str(tmp_path), '--max-iters', '8', '--checkpoint-interval', '2',
            '--eval-interval', '4', *TINY]
    proc = subprocess.Popen(args, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not (tmp_path / 'iter_2.pth').exists():
            assert proc.poll() is None, 'train.py ended before its first checkpoint'
            assert time.time() < deadline
            time.sleep(0.05)
        time.sleep(0.5)  # land somewhere in the next iterations (maybe inside a save)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    newest = find_resume_checkpoint(str(tmp_path))
    assert newest is not None
    torch.load(newest, weights_only=True)                       # complete file
    torch.load(tmp_path / 'latest.pth', weights_only=True)      # never dangling or partial
    assert not (tmp_path / 'iter_8.pth').exists(), 'killed too late to test anything'

    run_train('--dataset', 'demo', '--data-root', tiny_data, '--work-dir', str(tmp_path),
              '--max-iters', '8', '--checkpoint-interval', '2', '--eval-interval', '4',
              '--resume', 'auto', *TINY)
    assert not [n for n in os.listdir(tmp_path) if n.endswith('.tmp')]
    assert_same_weights(load_weights(tmp_path / 'latest.pth'),
                        load_weights(os.path.join(reference_run, 'iter_8.pth')))
    # a finished run is not trained again
    proc = run_train('--dataset', 'demo', '--data-root', tiny_data, '--work-dir', str(tmp_path),
                     '--max-iters', '8', '--resume', 'auto', *TINY)
    assert 'nothing to do' in proc.stdout


def test_resume_auto_in_empty_dir_still_loads_pretrained(reference_run, tiny_data, tmp_path):
    # train_eval.sh always passes --resume auto: a first run must start from --pretrained.
    pretrained = os.path.join(reference_run, 'iter_8.pth')
    proc = run_train('--dataset', 'demo', '--data-root', tiny_data, '--work-dir', str(tmp_path),
                     '--max-iters', '1', '--resume', 'auto', *TINY, '--pretrained', pretrained)
    assert 'starting at iteration 0' in proc.stdout and 'loaded pretrained' in proc.stdout
    start, after = load_weights(pretrained), load_weights(tmp_path / 'latest.pth')
    params = [k for k in start if 'running_' not in k and 'num_batches' not in k]
    # the first step's lr is 6e-11: the weights are still the pretrained ones
    assert all(torch.allclose(start[k], after[k], atol=1e-6) for k in params)


def test_find_resume_checkpoint_prefers_newest_iter(tmp_path):
    assert find_resume_checkpoint(str(tmp_path)) is None
    save_atomic({'x': 1}, str(tmp_path / 'iter_10.pth'))
    save_atomic({'x': 2}, str(tmp_path / 'iter_9.pth'))
    link_atomic(str(tmp_path / 'iter_9.pth'), str(tmp_path / 'latest.pth'))
    (tmp_path / '.iter_12.pth.abc.tmp').write_bytes(b'partial')   # a killed writer's leftover
    assert find_resume_checkpoint(str(tmp_path)) == str(tmp_path / 'iter_10.pth')
    link_atomic(str(tmp_path / 'iter_10.pth'), str(tmp_path / 'latest.pth'))
    assert torch.load(tmp_path / 'latest.pth', weights_only=True) == {'x': 1}


def test_fixed_batch_overfits(one_thread):
    """A few real training steps (recipe's groups, loss, AdamW) on one batch lower the loss."""
    from models import build_fhd, original_key_map
    from utils.schedule import build_param_groups
    torch.manual_seed(0)
    model = build_fhd(backbone='mit_b0', drop_path_rate=0.0)
    opt = torch.optim.AdamW(build_param_groups(model, 1e-4, 0.01, original_key_map(model)),
                            betas=(0.9, 0.999))
    img = torch.randn(2, 6, 64, 64)
    label = torch.zeros(2, 64, 64, dtype=torch.long)
    label[:, 16:40, 20:48] = 1
    img[:, 3:, 16:40, 20:48] += 1.5          # the change is visible in image B
    model.train()
    losses = []
    for _ in range(12):
        loss = train.compute_loss(model(img), label)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses


def test_compute_loss_is_mean_over_all_pixels():
    logits = torch.randn(1, 2, 4, 4)
    label = torch.randint(0, 2, (1, 4, 4))
    full = torch.nn.functional.cross_entropy(logits, label)
    assert train.compute_loss(logits, label).item() == pytest.approx(full.item())
    label[0, 0, :] = 255   # ignored pixels count 0 but stay in the denominator (original)
    per_pixel = torch.nn.functional.cross_entropy(logits, label, ignore_index=255, reduction='none')
    assert train.compute_loss(logits, label).item() == pytest.approx(per_pixel.sum().item() / 16)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_data, tmp_path, monkeypatch, capsys,
                                                      one_thread):
    real_loss = train.compute_loss
    calls = {'n': 0}

    def loss_turning_nan(logits, label):   # the real loss, poisoned from the 4th iteration on
        calls['n'] += 1
        loss = real_loss(logits, label)
        return loss * float('nan') if calls['n'] >= 4 else loss

    monkeypatch.setattr(train, 'compute_loss', loss_turning_nan)
    rc = train.main(['--dataset', 'demo', '--data-root', tiny_data, '--work-dir', str(tmp_path),
                     '--max-iters', '8', '--checkpoint-interval', '2', *TINY])
    err = capsys.readouterr().err
    assert rc == train.EXIT_NONFINITE
    assert 'error: loss is nan at iteration 4' in err and 'iter_2.pth' in err
    assert sorted(n for n in os.listdir(tmp_path) if n.endswith('.pth')) == ['iter_2.pth', 'latest.pth']
    weights = load_weights(tmp_path / 'latest.pth')
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_bad_arguments_are_one_line_errors(tiny_data, tmp_path, capsys, one_thread):
    rc = train.main(['--dataset', 'demo', '--data-root', tiny_data, '--work-dir', str(tmp_path),
                     '--resume', str(tmp_path / 'missing.pth'), *TINY])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.splitlines()[-1].startswith('error: --resume') and 'not found' in err
    rc = train.main(['--dataset', 'levir', '--data-root', str(tmp_path / 'nowhere'),
                     '--work-dir', str(tmp_path / 'w'), *TINY])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and 'nowhere' in err and 'not found' in err and 'Traceback' not in err
    assert not (tmp_path / 'w').exists()          # nothing is created for bad input
    rc = train.main(['--dataset', 'demo', '--data-root', tiny_data, '--max-iters', '0'])
    assert rc == 2 and '--max-iters must be positive' in capsys.readouterr().err


def test_ddp_two_processes_gloo(tiny_data, tmp_path):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
           os.path.join(ROOT, 'train.py'), '--dataset', 'demo', '--data-root', tiny_data,
           '--work-dir', str(tmp_path), '--max-iters', '3', '--checkpoint-interval', '3', *TINY]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(tmp_path / 'latest.pth', map_location='cpu', weights_only=True)
    assert ckpt['meta']['iter'] == 3
    assert not any(k.startswith('module.') for k in ckpt['state_dict'])
    config = json.load(open(tmp_path / 'config.json'))
    assert config['world_size'] == 2
    records = [json.loads(line) for line in open(tmp_path / 'train.jsonl')]
    assert [r['iter'] for r in records] == [1, 2, 3]        # rank 0 logs alone


def test_train_eval_sh_skips_missing_dataset(tmp_path):
    env = dict(_env(), DATA_ROOT=str(tmp_path), WORK_ROOT=str(tmp_path / 'w'),
               OUTPUT_ROOT=str(tmp_path / 'o'))
    proc = subprocess.run(['bash', os.path.join(ROOT, 'train_eval.sh'), 'levir', 'dsifn'],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f'skipping levir: dataset folder {tmp_path}/LEVIR not found' in proc.stdout
    assert f'skipping dsifn: dataset folder {tmp_path}/DSIFN not found' in proc.stdout
    assert not (tmp_path / 'w').exists()


def test_train_eval_sh_demo_end_to_end(tiny_data, tmp_path):
    """`bash train_eval.sh demo`: train, then eval.py with --show-dir and --color (tiny settings)."""
    import shutil
    shutil.copytree(tiny_data, tmp_path / 'demo')     # present, so ensure_demo generates nothing
    env = dict(_env(), DATA_ROOT=str(tmp_path), WORK_ROOT=str(tmp_path / 'w'),
               OUTPUT_ROOT=str(tmp_path / 'o'), ASSETS_DIR=str(tmp_path / 'assets'),
               TRAIN_ARGS='--backbone mit_b0 --max-iters 2 --batch-size 2 --crop-size 64 '
                          '--pretrained none --device cpu',
               EVAL_ARGS='--backbone mit_b0 --device cpu --num-workers 0')
    proc = subprocess.run(['bash', os.path.join(ROOT, 'train_eval.sh'), 'demo'], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / 'w' / 'fhd.demo' / 'latest.pth').is_file()
    metrics = json.load(open(tmp_path / 'o' / 'demo' / 'label' / 'metrics.json'))
    assert {'precision', 'recall', 'f1', 'iou', 'oa', 'kappa'} <= set(metrics)
    assert (tmp_path / 'o' / 'demo' / 'label' / 'test_0000.png').is_file()
    assert 'finished: demo' in proc.stdout
    # the README pictures: one row per test pair with change, 5 panels wide; the loss curve
    grid = cv2.imread(str(tmp_path / 'assets' / 'demo_results.png'))
    assert grid is not None and grid.shape[1] == 5 * 64 + 4 * 4
    assert cv2.imread(str(tmp_path / 'assets' / 'demo_loss.png')) is not None


def test_missing_pretrained_is_an_error_but_none_and_demo_train_from_scratch(tiny_data, tmp_path,
                                                                             capsys, one_thread):
    # a real dataset (custom) with the backbone file missing: stop before anything is written
    missing = tmp_path / 'model_ckpt' / 'mit_b0.pth'
    rc = train.main(['--dataset', 'custom', '--data-root', tiny_data, '--work-dir',
                     str(tmp_path / 'w'), *TINY, '--pretrained', str(missing)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and 'Traceback' not in err and len(err.splitlines()) == 1
    assert err.startswith(f'error: --pretrained {missing}: file not found')
    assert 'model_ckpt/README.md' in err and '--pretrained none' in err
    assert not (tmp_path / 'w').exists()
    # the default file of a real dataset is the one the original used; the demo's is none
    assert train.resolve_defaults(train.parse_args(['--dataset', 'levir'])).pretrained == \
        os.path.join('model_ckpt', 'mit_b2.pth')
    assert train.resolve_defaults(train.parse_args(['--dataset', 'demo'])).pretrained == 'none'
    assert train.resolve_defaults(train.parse_args(
        ['--dataset', 'demo', '--pretrained', 'x.pth'])).pretrained == 'x.pth'


class FakeArgs:
    def __init__(self, **kw):
        self.amp, self.compile = kw.get('amp', 'none'), kw.get('compile', False)


def test_gpu_option_checks():
    from utils.dist import DistInfo
    cuda, cpu = torch.device('cuda', 0), torch.device('cpu')
    with pytest.raises(train.TrainError) as e:
        train.check_gpu_options(FakeArgs(compile=True), cuda, DistInfo(rank=0, world_size=4))
    assert str(e.value).startswith('--compile with 4 processes') and 'SyncBatchNorm' in str(e.value)
    train.check_gpu_options(FakeArgs(compile=True), cuda, DistInfo())            # one GPU: fine
    train.check_gpu_options(FakeArgs(compile=True), cpu, DistInfo(world_size=2))  # gloo: no SyncBN
    with pytest.raises(train.TrainError, match='--amp fp16 needs CUDA'):
        train.check_gpu_options(FakeArgs(amp='fp16'), cpu, DistInfo())


def test_tf32_on_by_default_on_ampere(monkeypatch):
    assert train.parse_args(['--dataset', 'demo']).no_tf32 is False
    assert train.parse_args(['--dataset', 'demo', '--no-tf32']).no_tf32 is True
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        assert train.configure_tf32(torch.device('cpu'), True) is False     # CPU: untouched
        assert not torch.backends.cuda.matmul.allow_tf32
        for capability, expected in (((8, 0), True), ((7, 0), False)):      # A100 / V100
            monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda d, c=capability: c)
            assert train.configure_tf32(torch.device('cuda', 0), True) is expected
            assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert train.configure_tf32(torch.device('cuda', 0), False) is False    # --no-tf32
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def fp16_like_run(tiny_data, work, monkeypatch, poisoned, max_iters):
    """train.main with a GradScaler on CPU (the fp16 path, simulated) and an inf loss at the
    1-based iterations `poisoned`."""
    monkeypatch.setattr(train, 'make_scaler', lambda args, device: torch.amp.GradScaler('cpu'))
    real_loss, calls = train.compute_loss, {'n': 0}

    def loss_with_overflows(logits, label):
        calls['n'] += 1
        loss = real_loss(logits, label)
        return loss * float('inf') if calls['n'] in poisoned else loss

    monkeypatch.setattr(train, 'compute_loss', loss_with_overflows)
    return train.main(['--dataset', 'demo', '--data-root', tiny_data, '--work-dir', str(work),
                       '--max-iters', str(max_iters), '--checkpoint-interval', '1', *TINY])


def test_fp16_transient_inf_loss_is_skipped_not_fatal(tiny_data, tmp_path, monkeypatch, one_thread):
    assert fp16_like_run(tiny_data, tmp_path, monkeypatch, {3}, 4) == 0
    records = [json.loads(line) for line in open(tmp_path / 'train.jsonl')]
    assert [r.get('nonfinite_losses', 0) for r in records] == [0, 0, 1, 0]
    losses = [r['loss'] for r in records]      # the window of iteration 3 had no finite loss
    assert losses[2] == math.inf and all(math.isfinite(x) for i, x in enumerate(losses) if i != 2)
    two, three = load_weights(tmp_path / 'iter_2.pth'), load_weights(tmp_path / 'iter_3.pth')
    params = [k for k in two if 'running_' not in k and 'num_batches' not in k]
    assert all(torch.equal(two[k], three[k]) for k in params)      # the step was skipped
    four = load_weights(tmp_path / 'iter_4.pth')
    assert not all(torch.equal(three[k], four[k]) for k in params)  # and training went on
    assert torch.load(tmp_path / 'iter_4.pth', weights_only=True)['scaler']['scale'] < 65536


def test_fp16_persistent_inf_loss_stops(tiny_data, tmp_path, monkeypatch, capsys, one_thread):
    rc = fp16_like_run(tiny_data, tmp_path, monkeypatch, set(range(3, 100)), 20)
    err = capsys.readouterr().err
    assert rc == train.EXIT_NONFINITE
    assert (f'loss non-finite in {train.NONFINITE_PATIENCE} consecutive iterations up to '
            f'iteration {2 + train.NONFINITE_PATIENCE}') in err

"""The inference transform (models.for_inference): built from the weights as they are, never
stale, independent of the source model, exportable (TorchScript, ONNX Runtime == PyTorch)."""
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models import build_fhd, for_inference
from models.cost import reference_path
from models.reference_case import case_input
from utils.schedule import build_optimizer

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / 'fixtures'


def rel_err(new, ref):
    return ((new - ref).abs().max() / ref.abs().max()).item()


def random_bn_model(seed=0, backbone='mit_b0'):
    """A model whose BNs are not the identity (so that every BN fold matters)."""
    torch.manual_seed(seed)
    model = build_fhd(backbone)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
    return model.eval()


def run_eval(net, x):
    with torch.no_grad():
        return net(x)


def expected(model, x):
    """The model's eval function in the original's order of computation."""
    return run_eval(reference_path(model).eval(), x)


def test_inference_module_shares_nothing_with_the_source():
    model = random_bn_model()
    net = for_inference(model)
    ours = {t.data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    theirs = [t for t in list(net.parameters()) + list(net.buffers())]
    assert theirs and not ours & {t.data_ptr() for t in theirs}
    assert not net.training and not any(t.requires_grad for t in net.parameters())


def test_every_kind_of_weight_change_reaches_a_new_transform_and_never_an_old_one():
    model = random_bn_model(1)
    x = case_input(2, 2, 64, 96)
    state = {}

    def transform_now():
        state['net'] = for_inference(model)
        state['out'] = run_eval(state['net'], x)
        state['function'] = expected(model, x)
        assert rel_err(state['out'], state['function']) < 1e-5

    def check_changed(what):
        now = expected(model, x)
        assert rel_err(now, state['function']) > 1e-3, f'{what} did not change the function'
        assert rel_err(run_eval(for_inference(model), x), now) < 1e-5, what
        assert torch.equal(run_eval(state['net'], x), state['out']), f'{what} reached the old module'
        transform_now()

    transform_now()
    # a fused AdamW step (updates in place without bumping tensor versions)
    model.train()
    opt = build_optimizer(list(model.parameters()), lr=1e-2)
    F.cross_entropy(model(x), torch.zeros(2, 64, 96, dtype=torch.long)).backward()
    opt.step()
    model.eval()
    check_changed('optimizer step')
    # train-mode BatchNorm running statistics (in place, no version bump either)
    model.train()
    with torch.no_grad():
        model(x * 3 + 1)
    model.eval()
    check_changed('BN update')
    model.load_state_dict(random_bn_model(7).state_dict())
    check_changed('load_state_dict')
    # .to(): a round trip through float64 gives new tensors with the same values
    model.to(torch.float64).to(torch.float32)
    assert rel_err(run_eval(for_inference(model), x), state['function']) < 1e-5
    with torch.no_grad():
        model.decoder.fuse.bn.running_mean.add_(1.0)
    check_changed('.to() then an in-place edit')


def test_inference_module_moves_and_casts_like_any_module():
    model = random_bn_model(2)
    x = case_input(3, 1, 64, 64)
    ref64 = reference_path(model).to(torch.float64).eval()
    with torch.no_grad():
        exact = ref64(x.double())
        # folded in float64 from a float64 model: float64 round-off only
        assert rel_err(for_inference(copy.deepcopy(model).double())(x.double()), exact) < 1e-10
        # folded in float32, then moved: float32 round-off of the folded weights
        moved = for_inference(model).to(torch.float64)
        assert moved(x.double()).dtype == torch.float64
        assert rel_err(moved(x.double()), exact) < 1e-5


def test_inference_module_copies_pickles_and_loads_state_like_any_module(tmp_path):
    """The CPU module's packed oneDNN weights are derived from its plain buffers: a deep copy
    or a pickle derives them again, and load_state_dict re-derives them from the loaded
    weights (without that, the packed kernels would keep computing the old function)."""
    net, other = for_inference(random_bn_model(5)), for_inference(random_bn_model(6))
    x = case_input(6, 2, 64, 64)
    out, other_out = run_eval(net, x), run_eval(other, x)
    assert rel_err(out, other_out) > 1e-2
    assert torch.equal(run_eval(copy.deepcopy(net), x), out)
    torch.save(net, tmp_path / 'net.pt')
    assert torch.equal(run_eval(torch.load(tmp_path / 'net.pt', weights_only=False), x), out)
    net.load_state_dict(other.state_dict())
    assert torch.equal(run_eval(net, x), other_out)


def test_autocast_call_leaves_no_trace_in_later_fp32_calls():
    model = random_bn_model(3)
    x = case_input(4, 2, 64, 64)
    net = for_inference(model)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        low = net(x)
    assert low.dtype == torch.bfloat16
    fresh = run_eval(for_inference(copy.deepcopy(model)), x)
    assert rel_err(run_eval(net, x), fresh) < 1e-6


def test_wrapped_models_are_unwrapped():
    model = random_bn_model(4)
    x = case_input(5, 1, 64, 64)
    compiled = torch.compile(model)              # not run: only the wrapper's attribute is read
    assert rel_err(run_eval(for_inference(compiled), x), expected(model, x)) < 1e-5


# --- validation during training == eval.py on the same checkpoint ---------------------------

def _env():
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT))
    for key in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK'):
        env.pop(key, None)
    return env


def run_script(*args):
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_every_validation_during_training_equals_eval_py_on_its_checkpoint(tmp_path):
    """The logged val confusion matrix at each validation is eval.py's on that iteration's
    checkpoint (the fused AdamW step and train-mode BN must reach every validation)."""
    from datasets.synthetic import generate
    data = tmp_path / 'demo'
    generate(str(data), seed=5, counts={'train': 6, 'val': 3, 'test': 1}, size=64)
    work = tmp_path / 'work'
    run_script('train.py', '--dataset', 'demo', '--data-root', str(data), '--work-dir', str(work),
               '--backbone', 'mit_b0', '--pretrained', 'none', '--device', 'cpu',
               '--batch-size', '2', '--crop-size', '64', '--max-iters', '6', '--lr', '1e-3',
               '--warmup-iters', '0', '--checkpoint-interval', '2', '--eval-interval', '2',
               '--log-interval', '2')
    records = [json.loads(line) for line in open(work / 'train.jsonl')]
    vals = [r for r in records if r['mode'] == 'val']
    assert [r['iter'] for r in vals] == [2, 4, 6]
    counts = []
    for rec in vals:
        out = tmp_path / f'eval_{rec["iter"]}'
        run_script('eval.py', '--dataset', 'demo', '--data-root', str(data), '--split', 'val',
                   '--checkpoint', str(work / f'iter_{rec["iter"]}.pth'), '--backbone', 'mit_b0',
                   '--device', 'cpu', '--batch-size', '1', '--num-workers', '0',
                   '--output-dir', str(out))
        metrics = json.load(open(out / 'metrics.json'))
        assert {k: metrics[k] for k in ('tp', 'fp', 'fn', 'tn')} == \
               {k: rec[k] for k in ('tp', 'fp', 'fn', 'tn')}, rec['iter']
        counts.append(tuple(rec[k] for k in ('tp', 'fp', 'fn', 'tn')))
    assert len(set(counts)) > 1        # the model did change between validations


# --- export ---------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def reference_checkpoint(tmp_path_factory):
    """The recorded case's fill-rule mit_b2 weights as a checkpoint file."""
    from reference_model import filled_reference_model
    path = tmp_path_factory.mktemp('ckpt') / 'filled.pth'
    torch.save({'state_dict': filled_reference_model(seed=1).state_dict()}, path)
    return path


def export(checkpoint, fmt, out, backbone='mit_b2', size=('64', '64')):
    sys.path.insert(0, str(ROOT / 'tools'))
    try:
        import export as export_tool
    finally:
        sys.path.pop(0)
    code = export_tool.main(['--checkpoint', str(checkpoint), '--backbone', backbone,
                             '--format', fmt, '--out', str(out), '--size', *size])
    assert code == 0 and out.is_file()
    return out


@pytest.mark.slow
def test_onnx_export_runs_in_onnx_runtime_and_matches_pytorch(reference_checkpoint, tmp_path):
    ort = pytest.importorskip('onnxruntime')
    from reference_model import filled_reference_model
    path = export(reference_checkpoint, 'onnx', tmp_path / 'fhd.onnx')
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    case = np.load(FIXTURES / 'fhd_public_case.npz')
    out = session.run(None, {'pair': case['input']})[0]
    assert rel_err(torch.from_numpy(out), torch.from_numpy(case['logits'])) < 1e-4
    net = for_inference(filled_reference_model(seed=1))
    x = case_input(9, 2, 64, 96)                        # other batch and width than the export's
    out = torch.from_numpy(session.run(None, {'pair': x.numpy()})[0])
    assert rel_err(out, run_eval(net, x)) < 1e-4


@pytest.mark.slow
def test_torchscript_trace_of_the_default_inference_module(reference_checkpoint, tmp_path):
    from reference_model import filled_reference_model
    net = for_inference(filled_reference_model(seed=1))   # fused CPU kernels chosen
    x = case_input(1, 2, 64, 64)
    traced = torch.jit.trace(net, x, check_trace=False)
    case = np.load(FIXTURES / 'fhd_public_case.npz')
    with torch.no_grad():
        assert rel_err(traced(x), torch.from_numpy(case['logits'])) < 1e-4
        y = case_input(9, 1, 64, 96)
        assert rel_err(traced(y), net(y)) < 1e-5
    path = export(reference_checkpoint, 'torchscript', tmp_path / 'fhd.pt')
    with torch.no_grad():
        assert rel_err(torch.jit.load(str(path))(y), net(y)) < 1e-5


def test_export_bad_input_is_one_line_error(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / 'tools'))
    try:
        import export as export_tool
    finally:
        sys.path.pop(0)
    code = export_tool.main(['--checkpoint', str(tmp_path / 'missing.pth'), '--format', 'onnx',
                             '--out', str(tmp_path / 'x.onnx')])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith('error:') and 'missing.pth' in err and '\n' not in err
    assert not list(tmp_path.iterdir())                # nothing written


@pytest.mark.slow
def test_infer_py_with_onnx_equals_the_checkpoint(tmp_path):
    """infer.py --onnx FILE (ONNX Runtime) gives the masks infer.py --checkpoint gives."""
    pytest.importorskip('onnxruntime')
    import cv2
    import infer
    model = random_bn_model(6)
    ckpt = tmp_path / 'b0.pth'
    torch.save({'state_dict': model.state_dict()}, ckpt)
    onnx_file = export(ckpt, 'onnx', tmp_path / 'b0.onnx', backbone='mit_b0')
    rng = np.random.default_rng(0)
    for name in ('a', 'b'):                    # one tile and a bit: the sliding window runs
        cv2.imwrite(str(tmp_path / f'{name}.png'), rng.integers(0, 255, (300, 280, 3), np.uint8))
    common = ['--a', str(tmp_path / 'a.png'), '--b', str(tmp_path / 'b.png'), '--backbone',
              'mit_b0', '--prob']
    assert infer.main(['--checkpoint', str(ckpt), '--out', str(tmp_path / 'pt.png'), *common]) == 0
    assert infer.main(['--onnx', str(onnx_file), '--out', str(tmp_path / 'ort.png'), *common]) == 0
    pt, ort_mask = (cv2.imread(str(tmp_path / f'{n}.png'), cv2.IMREAD_UNCHANGED) for n in ('pt', 'ort'))
    assert pt.shape == ort_mask.shape == (300, 280)
    assert (pt != ort_mask).mean() < 1e-3                  # flips only at a zero margin
    prob_pt, prob_ort = (cv2.imread(str(tmp_path / f'{n}_prob.png'), cv2.IMREAD_UNCHANGED)
                         for n in ('pt', 'ort'))
    assert prob_pt.std() > 1                               # a map that varies, not a constant
    assert np.abs(prob_pt.astype(int) - prob_ort).max() <= 1
    with pytest.raises(SystemExit):            # both sources at once: a usage error
        infer.parse_args(['--onnx', str(onnx_file), '--checkpoint', str(ckpt), *common[:4],
                          '--out', 'x.png'])

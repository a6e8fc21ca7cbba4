"""Weight loading: official ImageNet MiT files, original FHD release files, own checkpoints, and
a clear one-line CheckpointError for every kind of bad file."""
import json
import re
from pathlib import Path

import pytest
import torch

from models import CheckpointError, build_fhd, load_checkpoint, original_key_map
from models.reference_case import load_manifest

FIXTURES = Path(__file__).parent / 'fixtures'


def random_state(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.zeros((), dtype=torch.int64) if k.endswith('num_batches_tracked')
                else torch.randn(shape, generator=g)) for k, shape in shapes.items()}


@pytest.fixture(scope='module')
def b2_model():
    return build_fhd('mit_b2')


def check_loaded(model, original_sd):
    """Every tensor of the file (original names) landed at the mapped place."""
    own = model.state_dict()
    for ours, orig in original_key_map(model).items():
        assert torch.equal(own[ours], original_sd[orig]), ours


def test_official_imagenet_mit_b2(tmp_path, b2_model):
    with open(FIXTURES / 'mit_b2_backbone_keys.json') as f:
        shapes = {e['key']: tuple(e['shape']) for e in json.load(f)['entries']}
    assert len(shapes) == 332
    sd = random_state(shapes, seed=1)
    sd['head.weight'], sd['head.bias'] = torch.randn(1000, 512), torch.randn(1000)
    decoder_before = {k: v.clone() for k, v in b2_model.decoder.state_dict().items()}
    for i, obj in enumerate([sd, {'model': sd}, {'state_dict': sd}]):
        path = tmp_path / f'mit_b2_{i}.pth'
        torch.save(obj, path)
        info = load_checkpoint(b2_model, path)
        assert info['kind'] == 'imagenet_backbone' and info['dropped'] == ['head.bias', 'head.weight']
        own = b2_model.state_dict()
        for ours, orig in original_key_map(b2_model).items():
            if ours.startswith('encoder.'):
                assert torch.equal(own[ours], sd[orig[len('backbone.backbone.'):]]), ours
        path.unlink()
    for k, v in b2_model.decoder.state_dict().items():   # the decoder is not touched
        assert torch.equal(v, decoder_before[k]), k


def test_original_release_checkpoint(tmp_path, b2_model):
    shapes = load_manifest(FIXTURES / 'fhd_mit_b2_state_dict.json')
    sd = random_state(shapes, seed=2)
    params = [v for k, v in sd.items() if 'running' not in k and 'num_batches' not in k]
    ckpt = {  # what mmcv 1.3.8 save_checkpoint writes (plain-typed meta, optimizer state)
        'meta': {'mmcv_version': '1.3.8', 'time': 'Mon Jan  3 10:00:00 2022', 'iter': 40000,
                 'epoch': 90, 'config': "model = dict(type='EncoderDecoder')", 'seed': None,
                 'CLASSES': ('unchanged', 'changed'), 'PALETTE': [[0, 0, 0], [255, 255, 255]],
                 'hook_msgs': {'last_ckpt': 'work_dirs/levir/iter_40000.pth'}},
        'state_dict': {'module.' + k: v for k, v in sd.items()},
        'optimizer': {'state': {0: {'step': 3, 'exp_avg': torch.zeros_like(params[0])}},
                      'param_groups': [{'lr': 6e-5, 'betas': (0.9, 0.999), 'eps': 1e-8,
                                        'weight_decay': 0.01, 'amsgrad': False,
                                        'params': list(range(len(params)))}]},
    }
    path = tmp_path / 'levir.pth'
    torch.save(ckpt, path)
    info = load_checkpoint(b2_model, path)
    assert info['kind'] == 'original' and info['meta']['iter'] == 40000
    assert info['dropped'] == ['decode_head.conv_seg.bias', 'decode_head.conv_seg.weight']
    check_loaded(b2_model, sd)


# ---- small mit_b0 models for round trips and the error cases ----

def b0_original_file(tmp_path, mutate=None, name='orig.pth'):
    model = build_fhd('mit_b0')
    sd = {orig: v.clone() for orig, v in
          zip(original_key_map(model).values(), model.state_dict().values())}
    sd['decode_head.conv_seg.weight'] = torch.randn(2, 128, 1, 1)
    sd['decode_head.conv_seg.bias'] = torch.randn(2)
    if mutate:
        mutate(sd)
    path = tmp_path / name
    torch.save({'meta': {'iter': 1}, 'state_dict': sd}, path)
    return path, sd


def test_b0_original_layout_and_own_checkpoint_round_trip(tmp_path):
    path, sd = b0_original_file(tmp_path)
    model = build_fhd('mit_b0')
    assert load_checkpoint(model, path)['kind'] == 'original'
    check_loaded(model, sd)
    # this project's own checkpoint (train.py layout), also with a DDP 'module.' prefix
    own = tmp_path / 'own.pth'
    torch.save({'meta': {'iter': 7, 'backbone': 'mit_b0'}, 'state_dict': model.state_dict(),
                'optimizer': {'state': {}, 'param_groups': []}}, own)
    for prefix in ('', 'module.'):
        torch.save({'state_dict': {prefix + k: v for k, v in model.state_dict().items()}}, own)
        fresh = build_fhd('mit_b0')
        assert load_checkpoint(fresh, own)['kind'] == 'project'
        for k, v in model.state_dict().items():
            assert torch.equal(fresh.state_dict()[k], v), k


def expect_error(model, path, *fragments):
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(model, path)
    msg = str(exc.value)
    assert '\n' not in msg and str(path) in msg, msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


def test_renamed_key_fails(tmp_path):
    def rename(sd):
        sd['backbone.backbone.block1.0.attn.qq.weight'] = sd.pop('backbone.backbone.block1.0.attn.q.weight')
    path, _ = b0_original_file(tmp_path, rename)
    expect_error(build_fhd('mit_b0'), path, 'unexpected keys', 'block1.0.attn.qq.weight', '(1)')


def test_missing_key_fails(tmp_path):
    path, _ = b0_original_file(tmp_path, lambda sd: sd.pop('decode_head.fhd2.tsm_fm.conv.bias'))
    expect_error(build_fhd('mit_b0'), path, 'missing keys', 'decoder.levels.1.mask_b.conv.bias')


def test_changed_shape_fails(tmp_path):
    def reshape(sd):
        sd['decode_head.linear_c2.proj.weight'] = torch.randn(768, 65)
    path, _ = b0_original_file(tmp_path, reshape)
    expect_error(build_fhd('mit_b0'), path, 'wrong shapes', 'decoder.level_proj.1.weight',
                 '(768, 65)')


def test_wrong_variant_fails(tmp_path):
    path, _ = b0_original_file(tmp_path)     # mit_b0 weights into an mit_b1 model
    msg = expect_error(build_fhd('mit_b1'), path, 'wrong shapes')
    assert 'in all)' in msg                  # a count when there are many


def test_truncated_file_fails(tmp_path):
    path, _ = b0_original_file(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    expect_error(build_fhd('mit_b0'), path, 'truncated, corrupt')


def test_missing_file_and_non_checkpoints_fail(tmp_path):
    model = build_fhd('mit_b0')
    expect_error(model, tmp_path / 'nope.pth', 'not found')
    text = tmp_path / 'notes.pth'
    text.write_text('this is not a checkpoint\n')
    expect_error(model, text, 'not a')
    plain = tmp_path / 'plain.pth'
    torch.save({'epoch': 3, 'lr': 0.1}, plain)
    expect_error(model, plain, 'not a checkpoint')
    assert issubclass(CheckpointError, ValueError)


def test_numpy_meta_loads_but_arbitrary_objects_are_refused(tmp_path):
    import numpy as np
    path, sd = b0_original_file(tmp_path)
    torch.save({'meta': {'seed': np.int64(5), 'palette': np.zeros((2, 3), np.uint8)},
                'state_dict': sd}, path)
    model = build_fhd('mit_b0')
    assert load_checkpoint(model, path)['meta']['seed'] == 5
    torch.save({'meta': {'x': ArbitraryObject()}, 'state_dict': sd}, path)
    expect_error(model, path, 'refusing to unpickle', 'ArbitraryObject')


class ArbitraryObject:
    pass


# ---- Hugging Face transformers SegFormer layout (nvidia/mit-b0..b5) ----

def hf_name(original):
    """The transformers name of an original bare MiT key, written out from the documented
    SegFormer layout (independent of the converter): None for kv, which is split."""
    m = re.match(r'patch_embed(\d)\.(proj|norm)\.(\w+)$', original)
    if m:
        part = 'proj' if m[2] == 'proj' else 'layer_norm'
        return f'segformer.encoder.patch_embeddings.{int(m[1]) - 1}.{part}.{m[3]}'
    m = re.match(r'norm(\d)\.(\w+)$', original)
    if m:
        return f'segformer.encoder.layer_norm.{int(m[1]) - 1}.{m[2]}'
    m = re.match(r'block(\d)\.(\d+)\.(.+)\.(weight|bias)$', original)
    stage, index, module, what = int(m[1]) - 1, m[2], m[3], m[4]
    hf_module = {'norm1': 'layer_norm_1', 'norm2': 'layer_norm_2', 'attn.q': 'attention.self.query',
                 'attn.sr': 'attention.self.sr', 'attn.norm': 'attention.self.layer_norm',
                 'attn.proj': 'attention.output.dense', 'mlp.fc1': 'mlp.dense1',
                 'mlp.fc2': 'mlp.dense2', 'mlp.dwconv.dwconv': 'mlp.dwconv.dwconv',
                 'attn.kv': None}[module]
    return hf_module and f'segformer.encoder.block.{stage}.{index}.{hf_module}.{what}'


def hf_state_dict(original_sd, prefix=True, classifier=True):
    out = {}
    for k, v in original_sd.items():
        name = hf_name(k)
        if name is None:          # attn.kv -> key (first half of the rows), value (second)
            base = hf_name(k.replace('attn.kv', 'attn.q')).replace('.query.', '.')
            half = v.shape[0] // 2
            out[base.replace('attention.self.', 'attention.self.key.')] = v[:half].clone()
            out[base.replace('attention.self.', 'attention.self.value.')] = v[half:].clone()
        else:
            out[name] = v
    if classifier:
        out['classifier.weight'], out['classifier.bias'] = torch.randn(1000, 512), torch.randn(1000)
    if not prefix:
        out = {k[len('segformer.'):] if k.startswith('segformer.') else k: v for k, v in out.items()}
    return out


@pytest.fixture(scope='module')
def b2_original_backbone():
    with open(FIXTURES / 'mit_b2_backbone_keys.json') as f:
        shapes = {e['key']: tuple(e['shape']) for e in json.load(f)['entries']}
    return random_state(shapes, seed=3)


def test_huggingface_layout_safetensors_and_bin(tmp_path, b2_model, b2_original_backbone):
    from safetensors.torch import save_file
    sd = b2_original_backbone
    hf = hf_state_dict(sd)
    assert sum('.attention.self.key.' in k for k in hf) == 2 * 16      # 16 blocks in mit_b2
    assert not any('kv' in k for k in hf)
    files = []
    save_file(hf, tmp_path / 'model.safetensors')
    files.append(tmp_path / 'model.safetensors')
    torch.save(hf_state_dict(sd, prefix=False), tmp_path / 'pytorch_model.bin')
    files.append(tmp_path / 'pytorch_model.bin')
    torch.save(hf_state_dict(sd, classifier=False), tmp_path / 'encoder_only.bin')
    files.append(tmp_path / 'encoder_only.bin')
    decoder_before = {k: v.clone() for k, v in b2_model.decoder.state_dict().items()}
    for path in files:
        for v in b2_model.encoder.parameters():
            v.data.zero_()
        info = load_checkpoint(b2_model, path)
        assert info['kind'] == 'huggingface_backbone', path
        expected_dropped = [] if path.name == 'encoder_only.bin' else ['classifier.bias',
                                                                        'classifier.weight']
        assert info['dropped'] == expected_dropped
        own = b2_model.state_dict()
        for ours, orig in original_key_map(b2_model).items():
            if ours.startswith('encoder.'):     # every encoder tensor exactly, kv = [key; value]
                assert torch.equal(own[ours], sd[orig[len('backbone.backbone.'):]]), (path, ours)
    for k, v in b2_model.decoder.state_dict().items():
        assert torch.equal(v, decoder_before[k]), k


@pytest.fixture(scope='module')
def b0():
    """An mit_b0 FHD and its encoder as original bare names (what an ImageNet file holds)."""
    model = build_fhd('mit_b0')
    prefix = 'backbone.backbone.'
    sd = {orig[len(prefix):]: model.state_dict()[ours].clone()
          for ours, orig in original_key_map(model).items() if orig.startswith(prefix)}
    return model, sd


def b0_hf_file(tmp_path, sd, mutate=None, name='hf.safetensors'):
    from safetensors.torch import save_file
    hf = hf_state_dict(sd, classifier=False)
    if mutate:
        mutate(hf)
    save_file(hf, tmp_path / name)
    return tmp_path / name


def test_huggingface_errors(tmp_path, b0):
    model, sd = b0

    def drop_value(hf):
        del hf['segformer.encoder.block.1.0.attention.self.value.weight']
    expect_error(model, b0_hf_file(tmp_path, sd, drop_value),
                 'block.1.0.attention.self.key.weight', 'no matching value')

    def rename(hf):
        hf['segformer.encoder.block.0.0.mlp.dense3.weight'] = hf.pop(
            'segformer.encoder.block.0.0.mlp.dense2.weight')
    expect_error(model, b0_hf_file(tmp_path, sd, rename), 'unexpected keys', 'mlp.dense3.weight')

    def drop_stage_norm(hf):
        del hf['segformer.encoder.layer_norm.3.bias']
    expect_error(model, b0_hf_file(tmp_path, sd, drop_stage_norm), 'missing keys',
                 'encoder.stages.3.norm.bias')
    # mit_b0 weights are not mit_b1 weights
    expect_error(build_fhd('mit_b1'), b0_hf_file(tmp_path, sd), 'wrong shapes')
    path = b0_hf_file(tmp_path, sd)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    expect_error(model, path, 'truncated or corrupt')


def test_bin_files_load_without_safetensors(tmp_path, monkeypatch, b0):
    import builtins
    real_import = builtins.__import__

    def no_safetensors(name, *args, **kwargs):
        if name.startswith('safetensors'):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    model, sd = b0
    st = b0_hf_file(tmp_path, sd)
    torch.save(hf_state_dict(sd, classifier=False), tmp_path / 'pytorch_model.bin')
    monkeypatch.setattr(builtins, '__import__', no_safetensors)
    assert load_checkpoint(model, tmp_path / 'pytorch_model.bin')['kind'] == 'huggingface_backbone'
    expect_error(model, st, 'needs the safetensors package', 'pip install safetensors')


def test_describe_prints_kind_size_and_sha256(tmp_path, capsys, b0):
    import hashlib
    from models import checkpoint
    path = b0_hf_file(tmp_path, b0[1])
    assert checkpoint.main([str(path), '--backbone', 'mit_b0']) == 0
    out = capsys.readouterr().out
    assert 'kind: huggingface_backbone' in out
    assert f'sha256: {hashlib.sha256(path.read_bytes()).hexdigest()}' in out
    assert f'bytes: {path.stat().st_size}' in out
    n_encoder = sum(v.numel() for v in b0[0].encoder.parameters())
    assert f'parameters_loaded: {n_encoder}' in out
    assert checkpoint.main([str(tmp_path / 'missing.pth')]) == 2
    assert capsys.readouterr().err.startswith('error: ')

"""infer_<name>.sh: where-to-get-it messages for a missing checkpoint / dataset, and the
eval.py command they run (checked with a stand-in python that prints its arguments)."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = {'levir': 'LEVIR', 'levir+': 'LEVIR+', 's2looking': 'S2Looking', 'dsifn': 'DSIFN'}


def run_script(workdir, name, env=None):
    """Run a copy of the script in an empty folder: it resolves every path from its own folder."""
    script = workdir / f'infer_{name}.sh'
    shutil.copy(REPO / script.name, script)
    return subprocess.run(['bash', str(script), '--color', '--amp', 'fp16'], cwd='/', capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


@pytest.mark.parametrize('name', SCRIPTS)
def test_missing_checkpoint_says_where_to_get_it(tmp_path, name):
    result = run_script(tmp_path, name)
    assert result.returncode != 0
    assert f'model_ckpt/{name}.pth' in result.stderr
    assert 'github.com/ZSVOS/FHD' in result.stderr and 'Google Drive' in result.stderr
    assert str(tmp_path / 'model_ckpt' / f'{name}.pth') in result.stderr     # where to put it


@pytest.mark.parametrize('name', SCRIPTS)
def test_missing_dataset_says_where_to_put_it(tmp_path, name):
    (tmp_path / 'model_ckpt').mkdir()
    (tmp_path / 'model_ckpt' / f'{name}.pth').write_bytes(b'')
    result = run_script(tmp_path, name)
    assert result.returncode != 0
    assert f'data/{SCRIPTS[name]}/test' in result.stderr
    assert str(tmp_path / 'data' / SCRIPTS[name]) in result.stderr and 'README' in result.stderr


@pytest.mark.parametrize('name', SCRIPTS)
def test_runs_eval_with_show_dir_and_extra_arguments(tmp_path, name):
    (tmp_path / 'model_ckpt').mkdir()
    (tmp_path / 'model_ckpt' / f'{name}.pth').write_bytes(b'')
    for sub in ('A', 'B', 'label'):
        (tmp_path / 'data' / SCRIPTS[name] / 'test' / sub).mkdir(parents=True)
    fake_python = tmp_path / 'fake_python'
    fake_python.write_text('#!/bin/sh\necho "cwd=$PWD"\nprintf "%s\\n" "$@"\n')
    fake_python.chmod(0o755)
    result = run_script(tmp_path, name, env={'PYTHON': str(fake_python)})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f'cwd={tmp_path}' and lines[1] == 'eval.py'
    args = lines[2:]

    def value(option):
        return args[args.index(option) + 1]

    assert value('--dataset') == name and value('--split') == 'test'
    assert value('--checkpoint') == f'model_ckpt/{name}.pth'
    assert value('--data-root') == f'data/{SCRIPTS[name]}'
    assert value('--show-dir') == f'output_path/{name}/label'
    assert args[-3:] == ['--color', '--amp', 'fp16']                          # "$@" passed through

"""The demo pipeline at reduced size (`m3reid-demo --quick`): it writes the synthetic data, a run folder whose
metrics.json holds the untrained (epoch 0) and the trained evaluation, and the figures; a second run re-uses the
data."""
import json, os, subprocess, sys
from pathlib import Path

import pytest

FIGURES = ['cmc', 'curves', 'modality_gap', 'ranked_i2v', 'ranked_v2i']


def _run_demo(cwd, *extra):
    env = dict(os.environ, OMP_NUM_THREADS='1', MPLBACKEND='Agg', M3REID_OFFLINE='1')
    cmd = [sys.executable, '-c', 'import sys; from m3reid.cli import demo; sys.exit(demo())', '--quick', *extra]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp('demo')
    r = _run_demo(cwd)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return cwd, r


def test_outputs_under_current_folder(demo_run):
    cwd, r = demo_run
    assert (cwd / 'synthetic_data' / 'hitszvcm_demo_quick' / '.synthetic_complete').is_file()
    runs = sorted((cwd / 'demo_runs' / 'HITSZVCM').glob('Time-*_demo'))
    assert len(runs) == 1
    run = runs[0]
    records = json.loads((run / 'metrics.json').read_text())
    assert [rec['epoch'] for rec in records] == [0, 1]
    for rec in records:
        for mode in ('i2v', 'v2i'):
            assert 0 <= rec[mode]['mAP'] <= 1 and 0 <= rec[mode]['r1'] <= 1
    for name in FIGURES:
        png = run / 'figures' / f'{name}.png'
        assert png.is_file() and png.read_bytes()[:4] == b'\x89PNG' and png.stat().st_size > 2000, png
    assert list((run / 'tensorboard').glob('events.out.tfevents.*'))
    assert list((run / 'modelckpt').glob('model_epoch-1.pth'))
    from m3reid.features import load_features
    fs = load_features(run / 'features' / 'test.safetensors')  # the test embeddings, for m3reid-test --features
    assert len(fs.select('query')) == records[-1]['num_query']['i2v'] and fs.meta['epoch'] == 1


def test_prints_table_and_locations(demo_run):
    cwd, r = demo_run
    out = r.stdout
    assert 'untrained (epoch 0)' in out and 'trained (epoch 1)' in out and 'change (points)' in out
    assert 'k-reciprocal re-ranking of the trained model' in out and 're-ranked' in out
    assert '--pretrained none' in out and 'training from scratch' in out
    assert 'tensorboard --logdir demo_runs' in out
    for name in FIGURES: assert f'{name}.png' in out


def test_second_run_reuses_data(demo_run):
    cwd, _ = demo_run
    marker = cwd / 'synthetic_data' / 'hitszvcm_demo_quick' / '.synthetic_complete'
    before = marker.stat().st_mtime_ns
    r = _run_demo(cwd, '--no_figures', '--epochs', '1')
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert 're-used' in r.stdout
    assert marker.stat().st_mtime_ns == before
    assert len(list((cwd / 'demo_runs' / 'HITSZVCM').glob('Time-*_demo'))) == 2


def test_bad_arguments(tmp_path):
    r = _run_demo(tmp_path, '--epochs', '0')
    assert r.returncode == 2 and '--epochs' in r.stderr
    assert not (tmp_path / 'synthetic_data').exists()

"""`m3reid-bench gpu` in its CPU mode, the mode continuous integration can run (no CUDA here).

What they pin: the whole check runs at tiny sizes and passes; it prints one table and writes the JSON layout that
the GPU runs will be read from; every GPU figure reads "not measured"; the training runs really checked that the
loss stayed finite and fell; a failing item and an item past its time limit are reported in their rows, the
command carries on and exits non-zero.
"""
import json, os, subprocess, sys

import pytest

ENV = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONUNBUFFERED='1')
ITEMS = ['machine', 'synthetic-data', 'train-fp16', 'train-bf16', 'speed-fp16', 'speed-fp16-cl', 'speed-bf16',
         'speed-bf16-cl', 'ddp', 'metric', 'rerank', 'loader', 'compile-bf16-cl', 'estimate']
ROW_KEYS = {'item', 'label', 'group', 'gpu_row', 'required', 'status', 'value', 'details', 'seconds', 'limit_s', 'error',
            'data', 'failed'}


def check(args, cwd):
    return subprocess.run([sys.executable, '-m', 'm3reid.bench.core', 'gpu', '--cpu', *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope='module')
def full(tmp_path_factory):
    d = tmp_path_factory.mktemp('gpu-check')
    p = check(['--output', str(d / 'check.json')], d)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    return p.stdout, json.loads((d / 'check.json').read_text())


def test_one_table_and_a_verdict(full):
    out, _ = full
    heads = [l for l in out.splitlines() if l.split()[:5] == ['item', 'status', 'value', 'details', 's']]
    assert len(heads) == 1
    assert 'all checks passed' in out and 'table written to' in out


def test_json_layout(full):
    _, doc = full
    assert {'command', 'format', 'mode', 'complete', 'ok', 'failed', 'started', 'wall_s', 'budget_s', 'goal_peak_bytes',
            'machine', 'sizes', 'rows'} <= set(doc)
    assert (doc['mode'], doc['complete'], doc['ok'], doc['failed']) == ('cpu', True, True, [])
    assert [r['item'] for r in doc['rows']] == ITEMS
    for r in doc['rows']:
        assert set(r) == ROW_KEYS, r['item']
        assert r['status'] in (('ok', 'not available') if r['item'] == 'rerank' else ('ok',)), (r['item'], r['error'])
        assert not r['failed'] and r['error'] is None
    assert doc['machine']['cuda_available'] is False and doc['sizes']['arch'] == 'resnet18'


def test_gpu_rows_not_measured(full):
    _, doc = full
    rows = {r['item']: r for r in doc['rows']}
    assert all(r['value'] == 'not measured' for r in rows.values() if r['gpu_row'])
    assert {i for i, r in rows.items() if not r['gpu_row']} == {'machine', 'synthetic-data'}
    assert rows['machine']['value'].startswith('CPU mode')
    assert rows['train-fp16']['details'].startswith('CPU tiny run: loss ')


def test_losses_checked(full):
    _, doc = full
    rows = {r['item']: r for r in doc['rows']}
    for item, precision in (('train-fp16', 'fp32'), ('train-bf16', 'bf16')):  # fp16 needs CUDA: fp32 on the CPU
        d = rows[item]['data']
        assert d['precision'] == precision and d['finite'] and d['falls'] and d['skipped'] == 0
        assert d['steps'] >= 15 and len(d['losses']) == d['epochs'] >= 3
        assert d['losses'][-1] < d['losses'][0]
    assert all(rows['ddp']['data']['checks'].values()) and rows['ddp']['data']['world_size'] == 1
    assert rows['metric']['data']['max_abs_diff'] < 1e-6
    assert rows['compile-bf16-cl']['data']['graphs'] >= 1
    assert rows['estimate']['data']['steps_per_epoch'] > 0


def test_failures_reported_and_the_command_carries_on(tmp_path):
    p = check(['--only', 'metric', '--fail', 'metric', '--limit', 'machine=0.2', '--output', str(tmp_path / 'c.json')],
              tmp_path)
    assert p.returncode == 1, p.stdout[-3000:] + p.stderr[-3000:]
    doc = json.loads((tmp_path / 'c.json').read_text())
    rows = {r['item']: r for r in doc['rows']}
    assert list(rows) == ['machine', 'metric'] and not doc['ok'] and doc['failed'] == ['machine', 'metric']
    assert rows['machine']['status'] == 'time limit' and 'limit' in rows['machine']['error']
    assert rows['metric']['status'] == 'FAILED'
    assert rows['metric']['error'] == 'RuntimeError: injected failure (--fail metric)'
    assert 'FAILED: machine, metric' in p.stdout and '--- metric: last lines of' in p.stdout

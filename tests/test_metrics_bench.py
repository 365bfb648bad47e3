"""Smoke tests of `m3reid-bench metrics` (module `m3reid.bench.metrics`) at a tiny size.

They pin that the benchmark runs end to end on CPU, that the vectorised metrics agree with the per-query loop on the
benchmark's problem, and that the console dispatcher reaches the topic with its options.
"""
import os, subprocess, sys

from m3reid.bench.metrics import main

TINY = ['--num-query', '40', '--num-gallery', '50', '--num-ids', '8', '--repeat', '1', '--device', 'cpu']

def test_metrics_bench_tiny(capsys):
    "The table has both modes, positive times, and the two implementations agree."
    rows = main(TINY)
    out = capsys.readouterr().out
    assert 'i2v 40x50' in out and 'v2i 50x40 (transpose)' in out and 'speed-up' in out
    assert [r['device'] for r in rows] == ['cpu', 'cpu']
    for r in rows:
        assert r['loop_s'] > 0 and r['evaluate_s'] > 0 and r['max_abs_diff'] < 1e-6

def test_metrics_bench_console():
    "`m3reid-bench metrics ...` dispatches to this module and prints its table."
    env = dict(os.environ, OMP_NUM_THREADS='1')
    code = 'import sys; from m3reid.bench.core import main; main(sys.argv[1:])'
    res = subprocess.run([sys.executable, '-c', code, 'metrics', *TINY], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert 'evaluate (ms)' in res.stdout and 'v2i 50x40' in res.stdout

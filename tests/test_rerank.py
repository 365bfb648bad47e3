"""k-reciprocal re-ranking (`m3reid.rerank.k_reciprocal`) against a slow reference written plainly here, and the
`m3reid-bench rerank` benchmark at a tiny size.

What they pin: the vectorised, chunked implementation gives the published algorithm's numbers (to 1e-5) on random
problems, with ties broken by the lower index, for float32 and float64, NumPy and torch inputs, every chunk size and
parameters at their edges; the benchmark runs end to end and its two implementations agree.
"""
import os, subprocess, sys

import numpy as np
import pytest
import torch

from m3reid.rerank import k_reciprocal, rerank_settings


def reference(q_g, q_q, g_g, k1=20, k2=6, lambda_value=0.3):
    "Re-ranking by the letter of the algorithm: sets, loops, a stable full sort."
    Q, G = q_g.shape
    N = Q + G
    D = np.zeros((N, N), dtype=np.float64 if q_g.dtype == np.float64 else np.float32)
    D[:Q, :Q], D[:Q, Q:], D[Q:, :Q], D[Q:, Q:] = q_q, q_g, q_g.T, g_g
    M = (D.astype(np.float64) * D.astype(np.float64)).astype(np.float32)
    M = M / M.max(axis=0)          # each column over its maximum ...
    M = M.T                        # ... and row i is column i
    nearest = [list(np.argsort(M[i], kind='stable')) for i in range(N)]

    def reciprocal(i, k):
        return [j for j in nearest[i][:k + 1] if i in nearest[j][:k + 1]]

    V = np.zeros((N, N), np.float32)
    for i in range(N):
        core = reciprocal(i, k1)
        members = set(core)
        for c in core:
            half = reciprocal(c, int(round(k1 / 2)))
            if len(set(half) & set(core)) > 2 / 3 * len(half):
                members |= set(half)
        cols = sorted(members)
        w = np.exp(-M[i, cols])
        V[i, cols] = w / w.sum()
    if k2 != 1:
        V = np.array([V[nearest[i][:k2]].mean(axis=0) for i in range(N)], dtype=np.float32)
    out = np.zeros((Q, G), np.float32)
    for p in range(Q):
        for g in range(G):
            shared = np.minimum(V[p], V[Q + g]).sum()
            jaccard = 1 - shared / (2 - shared)
            out[p, g] = jaccard * (1 - lambda_value) + M[p, Q + g] * lambda_value
    return out


def problem(seed, Q, G, dim=3, ties=False, dtype=np.float32):
    rng = np.random.default_rng(seed)
    q, g = rng.normal(size=(Q, dim)), rng.normal(size=(G, dim))
    if ties:
        q, g = np.round(q), np.round(g)      # few distinct points: many equal distances
    dist = lambda a, b: np.linalg.norm(a[:, None] - b[None], axis=-1).astype(dtype)
    return dist(q, g), dist(q, q), dist(g, g)


CASES = [  # seed, Q, G, ties, dtype, k1, k2, lambda, chunk
    (0, 12, 15, False, np.float32, 20, 6, 0.3, None),
    (1, 10, 14, True, np.float32, 5, 3, 0.3, 64),
    (2, 7, 20, True, np.float32, 3, 1, 0.5, 7),
    (3, 15, 9, False, np.float64, 6, 4, 0.0, 100),
    (4, 9, 11, True, np.float64, 4, 6, 1.0, None),
    (5, 1, 6, False, np.float32, 2, 2, 0.3, 5),
    (6, 5, 1, True, np.float32, 1, 1, 0.3, None),
    (7, 18, 22, True, np.float32, 8, 5, 0.7, 300),
]

@pytest.mark.parametrize('seed,Q,G,ties,dtype,k1,k2,lam,chunk', CASES)
def test_matches_reference(seed, Q, G, ties, dtype, k1, k2, lam, chunk):
    args = problem(seed, Q, G, ties=ties, dtype=dtype)
    want = reference(*args, k1=k1, k2=k2, lambda_value=lam)
    got = k_reciprocal(*args, k1=k1, k2=k2, lambda_value=lam, chunk_elements=chunk)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == (Q, G)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_torch_in_torch_out_and_asymmetric_input():
    qg, qq, gg = problem(11, 8, 10, ties=True)
    rng = np.random.default_rng(0)
    qq = (qq + 0.01 * rng.random(qq.shape)).astype(np.float32)      # not symmetric: columns are what count
    want = reference(qg, qq, gg, k1=4, k2=3)
    got = k_reciprocal(torch.from_numpy(qg), torch.from_numpy(qq), torch.from_numpy(gg), k1=4, k2=3)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5, rtol=0)


def test_settings_and_errors():
    assert rerank_settings(True) == {'k1': 20, 'k2': 6, 'lambda_value': 0.3}
    qg, qq, gg = (torch.from_numpy(a) for a in problem(12, 4, 5))
    with pytest.raises(ValueError, match='g_g_dist must be 5 x 5|g_g_dist 5 x 5'):
        k_reciprocal(qg, qq, gg[:3, :3])
    with pytest.raises(ValueError, match='k2 must be an integer >= 1'):
        k_reciprocal(qg, qq, gg, k2=0)


def test_bench_small(capsys):
    from m3reid.bench.rerank import main
    rows = main(['--num-query', '40', '--num-gallery', '60', '--dim', '16', '--repeat', '1', '--device', 'cpu'])
    out = capsys.readouterr().out
    assert [r['impl'] for r in rows] == ['NumPy (direct)', 'm3reid.rerank'] and 'peak / (N x N fp32)' in out
    assert rows[1]['max_abs_diff'] < 1e-5 and rows[1]['seconds'] > 0


def test_bench_console_and_gpu_contract():
    "`m3reid-bench rerank --small` runs through the dispatcher; `bench_rerank` returns what the GPU check reads."
    from m3reid.bench.rerank import bench_rerank
    r = bench_rerank('cpu', 60, 80, 32, repeat=1)
    assert r['seconds'] > 0 and isinstance(r['peak_bytes'], int) and r['n'] == 140
    env = dict(os.environ, OMP_NUM_THREADS='1')
    code = 'import sys; from m3reid.bench.core import main; main(sys.argv[1:])'
    res = subprocess.run([sys.executable, '-c', code, 'rerank', '--small', '--repeat', '1', '--device', 'cpu'],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert 'NumPy (direct)' in res.stdout and 'm3reid.rerank' in res.stdout

"""The retrieval commands end to end on a tiny synthetic dataset: `m3reid-extract`, `m3reid-search`, `m3reid-export`.

What they pin: features extracted by the command score exactly like the model evaluated directly (with and without
re-ranking); a folder query is searched and drawn; each command's wrong input ends with one line on stderr naming
the argument or file and exit status 2 (anything else would raise); `m3reid-export` without the optional ONNX packages says how to
install them.
"""
import importlib, os, sys, types

import pytest
import torch

from m3reid.data.synthetic import make_synthetic_hitszvcm


def run(module, *args):
    "Call `<module>.main(args)` as its console script does (in this process); stdout, stderr and the exit status."
    import contextlib, io
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: importlib.import_module(module).main([str(a) for a in args])
        except SystemExit as e: code = e.code if isinstance(e.code, int) else 1
    return types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    "A tiny synthetic HITSZ-VCM, a random ResNet-18 M3-ReID snapshot, and its test-split features."
    from m3reid.data.manager import get_data_manager
    from m3reid.engine.checkpoint import save_weights
    from m3reid.models.registry import build_method
    tmp = tmp_path_factory.mktemp('retrieval')
    root = make_synthetic_hitszvcm(tmp/'HITSZ-VCM', num_train_ids=4, num_test_ids=4, img_size=(32, 16), seed=0)
    dm = get_data_manager('HITSZVCM', root, verbose=False)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = build_method('m3reid', dm.train_num_pids, arch='resnet18', pretrained=None, verbose=False)[0]
    ck = save_weights(tmp/'model.pth', net, {'model': 'm3reid', 'arch': 'resnet18', 'dataset': 'HITSZVCM',
                                             'dataset_dir': str(root), 'img_h': 32, 'img_w': 16, 'seq_len': 2},
                      epoch=1, num_classes=dm.train_num_pids)
    res = run('m3reid.features', '--resume', ck, '--output', tmp/'test.safetensors', '--workers', 0, '--device', 'cpu',
              '--batch_size', 8)
    assert res.returncode == 0, res.stderr
    assert 'tracklets' in res.stdout and 'query' in res.stdout
    return dict(tmp=tmp, root=root, dm=dm, net=net.eval(), ck=ck, features=tmp/'test.safetensors')


def test_saved_features_score_like_the_model(setup):
    from m3reid.engine.evaluate import build_test_sets, evaluate_model
    from m3reid.features import evaluate_features
    qs, gs = build_test_sets(setup['dm'], 32, 16, seq_len=2)
    for rr in (None, {'k1': 4, 'k2': 2, 'lambda_value': 0.5}):
        direct = evaluate_model(setup['net'], qs, gs, 'HITSZVCM', 'cpu', batch_size=8, rerank=rr)
        saved = evaluate_features(setup['features'], rerank=rr)
        assert saved['rerank'] == direct['rerank']
        assert ('reranked' in saved) == ('reranked' in direct) == (rr is not None)
        for part in ((direct, saved), (direct['reranked'], saved['reranked'])) if rr else ((direct, saved),):
            for mode in ('i2v', 'v2i'):
                for k, v in part[0][mode].items(): assert part[1][mode][k] == pytest.approx(v, abs=1e-6), (rr, mode, k)


def test_search_folder_query(setup):
    folder = os.path.dirname(setup['dm'].query_tracks[0][0])
    fig = setup['tmp']/'ranked.png'
    res = run('m3reid.search', '--gallery', setup['features'], '--query', folder, '--topk', 3, '--device', 'cpu',
              '--index', 'faiss-flat', '--figure', fig)
    assert res.returncode == 0, res.stderr
    assert 'search: faiss-flat over' in res.stdout and 'infrared' in res.stdout and fig.stat().st_size > 0
    lines = [l for l in res.stdout.splitlines() if l.strip()[:1].isdigit()]
    assert len(lines) == 3


@pytest.mark.parametrize('module,args,expect', [
    ('m3reid.features', ['--resume', 'nope.pth', '--output', 'x.safetensors'], 'nope.pth'),
    ('m3reid.features', ['--resume', '{ck}', '--output', 'x.safetensors', '--folders', 'no_such_dir'], 'no_such_dir'),
    ('m3reid.search', ['--gallery', 'none.safetensors', '--query', '.'], 'none.safetensors: no such features file'),
    ('m3reid.search', ['--gallery', '{features}', '--query', '{features}', '--index', 'faiss-hnsw', '--rerank',
                       '--rerank_max', '3'], '--rerank_max'),
    ('m3reid.export', ['--resume', 'nope.pth', '--output', 'x.onnx'], 'nope.pth'),
])
def test_bad_input_is_one_line(setup, module, args, expect, tmp_path, monkeypatch):
    args = [a.format(ck=setup['ck'], features=setup['features']) for a in args]
    monkeypatch.chdir(tmp_path)
    res = run(module, *args)
    prog = {'m3reid.features': 'm3reid-extract', 'm3reid.search': 'm3reid-search', 'm3reid.export': 'm3reid-export'}[module]
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert 'Traceback' not in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert res.stderr.startswith(f'{prog}: error:') and expect in res.stderr


def test_export_without_onnx_says_how_to_install(setup, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'onnxscript', None)    # as if not installed
    res = run('m3reid.export', '--resume', setup['ck'], '--output', tmp_path/'m.onnx')
    assert res.returncode == 2 and "pip install 'm3reid[export]'" in res.stderr and 'Traceback' not in res.stderr

"""Tracklet folders read in the datasets' frame order, and the model file checked, by `m3reid-extract` and `m3reid-search`.

What they pin: frames named 1..12.jpg come in numeric order whatever order the file system lists them in; a tracklet
folder, given to `m3reid-search --query` or to `m3reid-extract --folders`, gets the embedding of that tracklet's row
in the test-split features (the test-time clip takes frames at even steps, so any other order gives another clip);
a features file or a file of tensors without a classifier given as the checkpoint is refused in one line naming it.
"""
import contextlib, importlib, io, os, types
from pathlib import Path

import pytest
import torch

from m3reid.data.synthetic import make_synthetic_hitszvcm
from m3reid.features import folder_tracklets, load_features, natural_key


def run(module, *args):
    "`<module>.main(args)` as its console script runs it, in this process: stdout, stderr, exit status."
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: importlib.import_module(module).main([str(a) for a in args])
        except SystemExit as e: code = e.code if isinstance(e.code, int) else 1
    return types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def test_frames_in_numeric_order(tmp_path):
    for sub in ('cam10', 'cam2'):
        d = tmp_path / sub; d.mkdir()
        for k in [10, 11, 12] + list(range(1, 10)): (d / f'{k}.jpg').write_bytes(b'')   # 10..12 first on disk
        (d / 'notes.txt').write_text('not a frame')
    tracks = folder_tracklets(tmp_path)
    assert [Path(t[0]).parent.name for t in tracks] == ['cam2', 'cam10']
    for t in tracks: assert [Path(p).name for p in t] == [f'{k}.jpg' for k in range(1, 13)]
    assert folder_tracklets(tmp_path / 'cam2') == [tracks[0]]
    assert sorted(['f10.jpg', 'f9.jpg', 'f09.jpg', 'e100.jpg'], key=natural_key) == ['e100.jpg', 'f09.jpg', 'f9.jpg', 'f10.jpg']


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    "A tiny synthetic HITSZ-VCM, an untrained ResNet-18 M3-ReID snapshot and its test-split features."
    from m3reid.data.manager import get_data_manager
    from m3reid.engine.checkpoint import save_weights
    from m3reid.models.registry import build_method
    tmp = tmp_path_factory.mktemp('features')
    root = make_synthetic_hitszvcm(tmp / 'HITSZ-VCM', num_train_ids=3, num_test_ids=3, img_size=(32, 16), seed=1)
    dm = get_data_manager('HITSZVCM', root, verbose=False)
    torch.set_num_threads(1); torch.manual_seed(0)
    net = build_method('m3reid', dm.train_num_pids, arch='resnet18', pretrained=None, verbose=False)[0]
    ck = save_weights(tmp / 'model.pth', net, {'model': 'm3reid', 'arch': 'resnet18', 'dataset': 'HITSZVCM',
                                               'dataset_dir': str(root), 'img_h': 32, 'img_w': 16, 'seq_len': 3},
                      epoch=1, num_classes=dm.train_num_pids)
    res = run('m3reid.features', '--resume', ck, '--output', tmp / 'test.safetensors', '--workers', 0, '--device', 'cpu')
    assert res.returncode == 0, res.stderr
    fs = load_features(tmp / 'test.safetensors')
    # split rows whose folder holds just that tracklet (a folder may also hold a short tracklet the split leaves out)
    alone = [i for i, t in enumerate(fs.tracklets) if [set(f) for f in folder_tracklets(Path(t[0]).parent)] == [set(t)]]
    assert len(alone) >= 4 and all(len(fs.tracklets[i]) >= 12 for i in alone)   # 10.jpg.. exist: text order differs
    return types.SimpleNamespace(tmp=tmp, root=root, ck=ck, fs=fs, alone=alone)


def test_folder_query_embeds_as_the_split_row(tiny):
    from m3reid.search import load_queries
    for i in tiny.alone[:2]:
        q = load_queries(Path(tiny.fs.tracklets[i][0]).parent, tiny.fs, tiny.ck, 'cpu')
        assert int(q.mids[0]) == int(tiny.fs.mids[i])
        torch.testing.assert_close(q.feats[0], tiny.fs.feats[i], atol=1e-5, rtol=0)
        assert q.tracklets[0] == tiny.fs.tracklets[i]


def test_extract_folders_embeds_as_the_split(tiny):
    out = tiny.tmp / 'folders.safetensors'
    res = run('m3reid.features', '--resume', tiny.ck, '--output', out, '--folders', tiny.root / 'Test', '--workers', 0,
              '--device', 'cpu')
    assert res.returncode == 0, res.stderr
    fo = load_features(out)
    row = {frozenset(t): k for k, t in enumerate(fo.tracklets)}
    for i in tiny.alone:
        k = row[frozenset(tiny.fs.tracklets[i])]
        torch.testing.assert_close(fo.feats[k], tiny.fs.feats[i], atol=1e-5, rtol=0)
        assert fo.tracklets[k] == tiny.fs.tracklets[i]


def test_features_file_is_not_a_checkpoint(tiny):
    feats = tiny.tmp / 'test.safetensors'
    torch.save({'feats': tiny.fs.feats, 'pids': tiny.fs.pids}, tiny.tmp / 'feats.pth')
    folder = Path(tiny.fs.tracklets[0][0]).parent
    for module, args, name, what in [
            ('m3reid.features', ['--resume', feats, '--output', tiny.tmp / 'x.safetensors'], feats, 'a features file'),
            ('m3reid.search', ['--gallery', feats, '--query', folder, '--resume', feats], feats, 'a features file'),
            ('m3reid.features', ['--resume', tiny.tmp / 'feats.pth', '--output', tiny.tmp / 'x.safetensors'],
             tiny.tmp / 'feats.pth', 'without the classifier weights (2 tensors: feats, pids)')]:
        res = run(module, *args, '--device', 'cpu')
        assert res.returncode == 2, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and f'{name}: ' in lines[0] and what in lines[0], lines
        assert 'not a model checkpoint' in lines[0] and 'num_classes' not in lines[0]
    assert not (tiny.tmp / 'x.safetensors').exists()

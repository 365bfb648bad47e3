"""Checkpoint compatibility of `m3reid.models`: the original's state-dict layout, parameter count, and backbone
weight loading from files (torchvision's and the original's ImageNet file names) without any download."""
import os
from pathlib import Path

import pytest
import torch
import torchvision

from m3reid.models.backbones import build_backbone, hub_checkpoint_dir
from m3reid.models.m3reid import M3ReID, ORIGINAL_SIGNATURE_SHA256, load_weights, signature_sha256, state_dict_signature

torch.set_num_threads(1)
TSV = Path(__file__).resolve().parent / 'data' / 'original-checkpoint-keys.tsv'  # listed from the original code


@pytest.fixture(autouse=True)
def empty_torch_home(tmp_path, monkeypatch):
    "Every test sees an empty torch hub cache and no network downloads."
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    monkeypatch.setenv('M3REID_OFFLINE', '1')
    yield


@pytest.fixture(scope='module')
def r50():
    return M3ReID(500, verbose=False)


def _tsv_rows():
    rows = [l.split('\t') for l in TSV.read_text().splitlines() if l and not l.startswith('#')]
    assert rows[0] == ['key', 'shape', 'dtype']
    return rows[1:]


def test_signature_matches_pinned_hash(r50):
    assert signature_sha256(r50.state_dict()) == ORIGINAL_SIGNATURE_SHA256


def test_state_dict_equals_reference_tsv(r50):
    rows = _tsv_rows()
    assert len(rows) == 396
    assert state_dict_signature(r50.state_dict()) == ['\t'.join(r) for r in rows]


def test_parameter_count(r50):
    assert sum(p.numel() for p in r50.parameters()) == 39_518_278


def test_original_layout_state_dict_loads_strict(r50):
    rows = _tsv_rows()
    dtypes = {'float32': torch.float32, 'int64': torch.int64}
    sd = {}
    for key, shape, dtype in rows:
        shape = tuple(int(s) for s in shape.strip('()').split(',') if s.strip())
        sd[key] = torch.rand(shape).to(dtypes[dtype]) if dtype == 'float32' else torch.tensor(7, dtype=dtypes[dtype])
    report = load_weights(r50, sd, strict=True)
    assert report == {'missing': [], 'unexpected': [], 'mismatched': []}
    r50.load_state_dict(sd, strict=True)
    assert torch.equal(r50.classifier.weight.detach(), sd['classifier.weight'])
    assert r50.NL_2[1].W[1].num_batches_tracked.item() == 7


def test_mismatched_checkpoint_is_reported():
    model = M3ReID(7, arch='resnet18', verbose=False)
    sd = M3ReID(9, arch='resnet18', verbose=False).state_dict()
    with pytest.raises(RuntimeError, match=r'classifier.weight: checkpoint \(9, 3072\) vs model \(7, 3072\)'):
        load_weights(model, sd)


@pytest.mark.parametrize('fname', ['resnet50-0676ba61.pth', 'resnet50-19c8e357.pth'])
def test_pretrained_path_both_file_names(tmp_path, fname, capsys):
    ref = torchvision.models.resnet50()  # random init, with fc, as the ImageNet files are
    path = tmp_path / fname
    torch.save(ref.state_dict(), path)
    bb = build_backbone('resnet50', pretrained=str(path))
    assert torch.equal(bb.layer3[5].conv2.weight, ref.layer3[5].conv2.weight)
    assert torch.equal(bb.bn1.running_mean, ref.bn1.running_mean)
    assert str(path) in capsys.readouterr().out
    model = M3ReID(5, pretrained=path, verbose=False)
    assert torch.equal(model.backbone.conv1.weight, ref.conv1.weight)


@pytest.mark.parametrize('fname', ['resnet50-0676ba61.pth', 'resnet50-19c8e357.pth'])
def test_imagenet_from_hub_cache(fname, capsys):
    ref = torchvision.models.resnet50()
    folder = hub_checkpoint_dir()
    assert str(folder).startswith(os.environ['TORCH_HOME'])
    folder.mkdir(parents=True)
    torch.save(ref.state_dict(), folder / fname)
    bb = build_backbone('resnet50', pretrained='imagenet')
    assert torch.equal(bb.layer4[2].bn3.weight, ref.layer4[2].bn3.weight)
    out = capsys.readouterr().out
    assert 'ImageNet weights' in out and fname in out


def test_missing_imagenet_weights_message():
    with pytest.raises(FileNotFoundError) as e:
        build_backbone('resnet50', pretrained='imagenet')
    msg = str(e.value)
    assert 'resnet50-0676ba61.pth' in msg and 'resnet50-19c8e357.pth' in msg
    assert str(Path(os.environ['TORCH_HOME']) / 'hub' / 'checkpoints') in msg
    assert '--pretrained' in msg and 'M3REID_OFFLINE' in msg
    assert not (Path(os.environ['TORCH_HOME']) / 'hub' / 'checkpoints' / 'resnet50-0676ba61.pth').exists()


def test_missing_path_and_wrong_architecture(tmp_path):
    with pytest.raises(FileNotFoundError, match='no_such.pth'):
        build_backbone('resnet18', pretrained=tmp_path / 'no_such.pth')
    torch.save(torchvision.models.resnet50().state_dict(), tmp_path / 'r50.pth')
    with pytest.raises(RuntimeError, match='shape mismatches'):
        build_backbone('resnet18', pretrained=tmp_path / 'r50.pth')

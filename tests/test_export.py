"""`m3reid-export` keeps trained-like M3-ReID networks faithful in ONNX, and its parity check fails loudly."""
import shutil

import pytest
import torch

pytest.importorskip('onnx'); pytest.importorskip('onnxscript'); pytest.importorskip('onnxruntime')

from m3reid import export
from m3reid.engine.checkpoint import save_weights
from m3reid.models.registry import build_method

H, W, T = 32, 16, 3


def _trained_like(seed=0):
    """A random ResNet-18 M3-ReID whose `tw` attention heads have collapsed as they do in training: masks of
    practically zero on every frame, so GeM pools those channels to (0 + 1e-12)^(1/3) = 1e-4, and a BN neck whose
    running statistics for them are those of a constant channel (mean 1e-4, variance ~0), which amplifies any
    change of that 1e-4."""
    torch.manual_seed(seed)
    net = build_method('m3reid', 8, arch='resnet18', pretrained=None, verbose=False)[0].eval()
    C = net.mvl_attention.in_channels
    with torch.no_grad():
        net.mvl_attention.view_attention_tw.bias.fill_(-30.)
        net.bn_neck.running_mean[2 * C:4 * C], net.bn_neck.running_var[2 * C:4 * C] = 1e-4, 1e-12
    return net


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('export')
    net = _trained_like()
    ck = save_weights(tmp / 'model.pth', net, {'model': 'm3reid', 'arch': 'resnet18', 'img_h': H, 'img_w': W, 'seq_len': T},
                      epoch=1, num_classes=8)
    out = export.run_export(export.build_export_parser().parse_args(['--resume', str(ck), '--output', str(tmp / 'm.onnx')]))
    return tmp, ck, net, out


def test_collapsed_heads_are_pooled_to_gem_eps(exported):
    "The condition is active: the collapsed view's channels are eps^(1/3) in PyTorch."
    _, _, net, _ = exported
    with torch.no_grad(): pooled, _ = net.mvl_attention(net.frame_maps(torch.randn(1, T, 3, H, W)))
    C = net.mvl_attention.in_channels
    torch.testing.assert_close(pooled[:, 2 * C:4 * C], torch.full_like(pooled[:, 2 * C:4 * C], 1e-4), rtol=1e-5, atol=0)


def test_trained_like_parity(exported):
    "ONNX embeddings equal PyTorch's within 1e-4, for clip shapes the export never saw too."
    _, _, net, out = exported
    assert out['max_abs_diff'] is not None and out['max_abs_diff'] <= 1e-4, out
    assert export.check_onnx(out['path'], net, H, W, shapes=((3, 5), (1, 1))) <= 1e-4


def test_graph_keeps_gem_eps(exported):
    "The graph adds GeM's 1e-12 (the exporter's default rewrites delete that Add)."
    import onnx
    from onnx import numpy_helper
    m = onnx.load(exported[3]['path'])
    values = {n.output[0]: a.t for n in m.graph.node if n.op_type == 'Constant' for a in n.attribute if a.type == onnx.AttributeProto.TENSOR}
    values.update({t.name: t for t in m.graph.initializer})
    added = [float(numpy_helper.to_array(values[i]).ravel()[0]) for n in m.graph.node if n.op_type == 'Add'
             for i in n.input if i in values and values[i].data_type == onnx.TensorProto.FLOAT]
    assert any(v == pytest.approx(1e-12, rel=1e-6) for v in added), added


def test_parity_failure_is_one_line_and_exit_1(exported, monkeypatch, capsys):
    tmp, ck, _, out = exported
    def reuse(model, output, *a, **k): shutil.copy(out['path'], output); return export.Path(output)
    monkeypatch.setattr(export, 'export_onnx', reuse)  # the check, not the export, is under test
    with pytest.raises(SystemExit) as e:
        export.main(['--resume', str(ck), '--output', str(tmp / 'strict.onnx'), '--tolerance', '1e-12'])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith('m3reid-export: error: onnxruntime vs PyTorch') and '> tolerance' in err


def test_without_onnxruntime_says_unchecked(exported, monkeypatch, capsys):
    _, _, net, out = exported
    import importlib.util
    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'onnxruntime' else find(name, *a))
    assert export.verify_export(out['path'], net, H, W, T) is None
    assert 'onnxruntime is not installed' in capsys.readouterr().out

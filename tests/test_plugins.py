"""Methods and backbones from other packages, found through entry points (`m3reid.methods`, `m3reid.backbones`).

A tiny plugin package is written into a temporary folder the way an installer leaves it (the module and a
`*.dist-info` folder with `METADATA` and `entry_points.txt`), put on PYTHONPATH (no pip, no edit to m3reid), and
trained for one epoch through the `m3reid-train` console script. The registry's behaviour with broken, clashing or
old-style plugins is checked in-process.
"""
import json, os, shutil, subprocess, sys, textwrap
from pathlib import Path

import pytest
import torch

from m3reid.data.synthetic import make_synthetic_hitszvcm
from m3reid.models.backbones import BACKBONES, available_backbones, backbone_provider, build_backbone, check_backbone
from m3reid.models.registry import (METHODS, MethodContractError, available_methods, build_method, check_method,
                                    method_provider)

PLUGIN = '''
import torch.nn.functional as F
from torch import nn
from m3reid.models.backbones import build_backbone


def _block(cin, cout, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class TinyNet(nn.Module):
    "A four-stage convolutional backbone with the interface m3reid expects."
    def __init__(self, last_stride=2):
        super().__init__()
        self.stem = _block(3, 8, 2)
        self.layer1 = nn.Sequential(_block(8, 8, 1))
        self.layer2 = nn.Sequential(_block(8, 16, 2), _block(16, 16, 1))
        self.layer3 = nn.Sequential(_block(16, 16, 2))
        self.layer4 = nn.Sequential(_block(16, 32, last_stride))
        self.stage_channels, self.out_channels = [8, 16, 16, 32], 32

    def forward(self, x):
        x = self.stem(x)
        for i in range(1, 5): x = getattr(self, f'layer{i}')(x)
        return x


def tinynet(last_stride=2):
    return TinyNet(last_stride)


class MeanPool(nn.Module):
    def __init__(self, num_classes, arch, pretrained, last_stride):
        super().__init__()
        self.backbone = build_backbone(arch, pretrained=pretrained, last_stride=last_stride)
        self.embedding_dim = d = self.backbone.out_channels
        self.bn = nn.BatchNorm1d(d)
        self.classifier = nn.Linear(d, num_classes)

    def forward(self, clips):
        B, T = clips.shape[:2]
        video = self.bn(self.backbone(clips.flatten(0, 1)).mean((2, 3)).reshape(B, T, -1).mean(1))
        return {'logits': self.classifier(video)} if self.training else F.normalize(video, dim=1)


def criterion(outputs, pids, mids):
    loss = F.cross_entropy(outputs['logits'].float(), pids)
    return loss, {'id': loss.item(), 'acc': (outputs['logits'].argmax(1) == pids).float().mean().item()}


def build(num_classes, arch='tinynet', pretrained=None, last_stride=2, **options):
    return MeanPool(num_classes, arch, pretrained, last_stride), criterion


def old_style(num_classes, criterion_kwargs, **model_kwargs):
    return build(num_classes, **model_kwargs)
'''
ENTRY_POINTS = '[m3reid.methods]\ntiny = tinyplugin:build\n\n[m3reid.backbones]\ntinynet = tinyplugin:tinynet\n'
ENV = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONUNBUFFERED='1')


def install(site:Path, name:str, version:str, entry_points:str, modules:dict):
    "Leave in `site` what an installer would: the modules and `<name>-<version>.dist-info` with its entry points."
    for mod, src in modules.items(): (site/f'{mod}.py').write_text(src)
    dist = site/f'{name}-{version}.dist-info'
    dist.mkdir(parents=True)
    (dist/'METADATA').write_text(f'Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n')
    (dist/'entry_points.txt').write_text(entry_points)
    return site


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    return install(tmp_path_factory.mktemp('site'), 'tinyplugin', '1.2', ENTRY_POINTS, {'tinyplugin': PLUGIN})


@pytest.fixture
def on_path(site):
    "The plugin package importable in this process; the registries rescanned before and after."
    sys.path.insert(0, str(site)); METHODS.refresh(); BACKBONES.refresh()
    yield site
    sys.path.remove(str(site)); METHODS.refresh(); BACKBONES.refresh()
    sys.modules.pop('tinyplugin', None)


def m3reid_train():
    exe = Path(sys.executable).parent/'m3reid-train'
    return [str(exe)] if exe.exists() else [shutil.which('m3reid-train') or 'm3reid-train']


def test_names_providers_and_building(on_path):
    assert available_methods() == ['baseline', 'm3reid', 'tiny']
    assert 'tinynet' in available_backbones() and 'tinynet' in BACKBONES
    assert method_provider('tiny') == 'tinyplugin 1.2' and backbone_provider('tinynet') == 'tinyplugin 1.2'
    assert 'tinyplugin' not in sys.modules  # listing imports nothing
    with pytest.raises(ValueError, match=r"available: baseline, m3reid, tiny \(tinyplugin 1.2\)"): build_method('nosuch', 3)
    net, crit = build_method('tiny', 3, verbose=False)  # the plugin method on the plugin backbone
    assert check_method(net, crit, num_classes=3, image_size=(32, 16))['embedding_dim'] == 32
    assert check_backbone(build_backbone('tinynet', verbose=False), (32, 16))[-1] == ('layer4', (32, 2, 1))
    net, crit = build_method('m3reid', 3, arch='tinynet', non_local=(0, 1, 0, 0), verbose=False)  # a built-in method on it
    assert len(net.NL_2) == 1 and check_method(net, crit, num_classes=3, image_size=(32, 16))['embedding_dim'] == 32 * 6
    with pytest.raises(FileNotFoundError, match='no ImageNet weights'): build_backbone('tinynet', pretrained='imagenet')


def test_registry_errors(tmp_path, on_path):
    install(tmp_path, 'brokenplugin', '0.1', '[m3reid.methods]\nbroken = brokenplugin:build\n'
            'oldstyle = tinyplugin:old_style\nm3reid = tinyplugin:build\n',
            {'brokenplugin': 'raise ImportError("a dependency is missing")\n'})
    install(tmp_path, 'otherplugin', '2.0', '[m3reid.backbones]\ntinynet = tinyplugin:tinynet\n', {})
    sys.path.insert(0, str(tmp_path)); METHODS.refresh(); BACKBONES.refresh()
    try:
        with pytest.warns(UserWarning, match="entry point 'm3reid' of brokenplugin 0.1 ignored"): names = available_methods()
        assert names == ['baseline', 'broken', 'm3reid', 'oldstyle', 'tiny']
        assert method_provider('m3reid').startswith('m3reid ')  # a plugin cannot replace a built-in method
        with pytest.raises(ImportError, match=r"method 'broken' from brokenplugin 0.1: cannot import brokenplugin:build"):
            build_method('broken', 3)
        with pytest.raises(MethodContractError, match=r"builder\(num_classes, \*\*options\)"): build_method('oldstyle', 3)
        with pytest.raises(LookupError, match='declared by several installed packages') as e: build_backbone('tinynet')
        assert 'tinyplugin 1.2' in str(e.value) and 'otherplugin 2.0' in str(e.value)
    finally:
        sys.path.remove(str(tmp_path)); METHODS.refresh(); BACKBONES.refresh()


def test_register_in_process():
    "Without a package: a decorated builder; an old-style builder is refused at registration."
    from m3reid.models.registry import register_method
    with pytest.raises(MethodContractError, match='criterion_kwargs'):
        register_method('old')(lambda num_classes, criterion_kwargs, **model_kwargs: None)
    try:
        @register_method('inline')
        def inline(num_classes, **options): return build_method('baseline', num_classes, **options)
        assert 'inline' in available_methods() and method_provider('inline') == 'module test_plugins'
        assert type(build_method('inline', 2, arch='resnet18', verbose=False)[0]).__name__ == 'VideoBaseline'
    finally: del METHODS['inline']
    assert 'inline' not in METHODS


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    return make_synthetic_hitszvcm(tmp_path_factory.mktemp('data')/'HITSZ-VCM', num_train_ids=6, num_test_ids=4,
                                   img_size=(32, 16), seed=0)


@pytest.fixture(scope='module')
def plugin_run(site, data_root, tmp_path_factory):
    "One epoch of the plugin method on the plugin backbone, through the m3reid-train console script."
    runs = tmp_path_factory.mktemp('runs')
    env = dict(ENV, PYTHONPATH=os.pathsep.join([str(site), ENV.get('PYTHONPATH', '')]))
    r = subprocess.run([*m3reid_train(), '--model', 'tiny', '--arch', 'tinynet', '--pretrained', 'none',
                        '--dataset_dir', str(data_root), '--img_h', '32', '--img_w', '16', '--seq_len', '2',
                        '--p_num', '2', '--k_num', '4', '--workers', '0', '--device', 'cpu', '--epochs', '1',
                        '--log_interval', '5', '--output_dir', str(runs), '--desc', 'plugin'],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return next((runs/'HITSZVCM').iterdir()), r


def test_plugin_trains_through_the_console_script(plugin_run):
    run, _ = plugin_run
    recs = json.loads((run/'metrics.json').read_text())
    assert recs[-1]['epoch'] == 1 and 0 <= recs[-1]['i2v']['mAP'] <= 1 and 0 <= recs[-1]['v2i']['mAP'] <= 1
    assert (run/'modelckpt'/'model_epoch-1.pth').is_file()


def test_log_names_the_plugin_package(plugin_run):
    run, r = plugin_run
    log = next(run.glob('log_*.txt')).read_text()
    assert 'tinyplugin 1.2' in log


def test_unknown_names_list_the_plugins(on_path, data_root, capsys):
    from m3reid.cli import train
    for opt, want in (('--model', 'tiny'), ('--arch', 'tinynet')):
        with pytest.raises(SystemExit) as e: train([opt, 'nosuch', '--dataset_dir', str(data_root), '--device', 'cpu'])
        err = capsys.readouterr().err
        assert e.value.code == 2 and 'nosuch' in err and want in err, err

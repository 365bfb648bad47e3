"""The torchvision backbones beyond ResNet (ConvNeXt, Swin, ViT): parameter counts against torchvision, the same
features as torchvision with the same weights, ImageNet weights from the hub cache, last_stride, and a CPU training
step of M3-ReID on each (non-local blocks where the backbone has stages for them, or none)."""
import os

import pytest
import torch
from torchvision.models import get_model

from m3reid.models.backbones import (BACKBONES, available_backbones, build_backbone, check_backbone, hub_checkpoint_dir,
                                     load_backbone_state)
from m3reid.models.registry import build_method

NEW = ('convnext_tiny', 'swin_t', 'vit_b_16')
HEADS = {'convnext': ('classifier',), 'swin': ('head',), 'vit': ('heads', 'class_token'), 'resnet': ('fc',)}
# parameters without the head, as torchvision counts them
WANT = {'resnet50': 23_508_032, 'convnext_tiny': 27_818_592, 'swin_t': 27_519_354, 'vit_b_16': 85_797_888}


def _family(name): return name.split('_')[0].rstrip('0123456789')


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize('name', ('resnet50', 'convnext_tiny', 'swin_t', 'swin_v2_t', 'vit_b_16'))
@pytest.mark.parametrize('last_stride', (1, 2))
def test_parameter_counts_match_torchvision_without_head(name, last_stride):
    "Every registered name is counted in the backbones notebook; here one of each family, at both strides."
    if _family(name) == 'vit' and last_stride == 1: pytest.skip('a ViT has no last stride')
    with torch.device('meta'):
        ours, tv = BACKBONES[name].builder(last_stride=last_stride), get_model(name)
    head = sum(p.numel() for k, p in tv.named_parameters() if k.split('.')[0] in HEADS[_family(name)])
    n = sum(p.numel() for p in ours.parameters())
    assert n == sum(p.numel() for p in tv.parameters()) - head
    if name in WANT: assert n == WANT[name]


def test_all_new_names_registered():
    assert {'convnext_tiny', 'convnext_small', 'convnext_base', 'convnext_large', 'swin_t', 'swin_s', 'swin_b',
            'swin_v2_t', 'swin_v2_s', 'swin_v2_b', 'vit_b_16', 'vit_b_32', 'vit_l_16', 'vit_l_32'} <= set(available_backbones())


def _torchvision_map(name, tv, x):
    "torchvision's own feature map (before pooling) for x."
    if _family(name) == 'convnext': return tv.features(x)
    if _family(name) == 'swin': return tv.norm(tv.features(x)).permute(0, 3, 1, 2)
    raise ValueError(name)


@pytest.mark.parametrize('name', ('convnext_tiny', 'swin_v2_t'))  # swin_t: in the backbones notebook
def test_same_features_as_torchvision(name):
    torch.manual_seed(0)
    tv = get_model(name).eval()
    ours = build_backbone(name, verbose=False).eval()
    load_backbone_state(ours, tv.state_dict(), f'torchvision {name}')  # names translated, head dropped
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(): torch.testing.assert_close(ours(x), _torchvision_map(name, tv, x), rtol=1e-4, atol=1e-4)
    shapes = check_backbone(ours, (64, 32))
    assert [s[0] for s in shapes] == ['stem', 'layer1', 'layer2', 'layer3', 'layer4']


def test_vit_tokens_form_the_map():
    tv = get_model('vit_b_16').eval()
    ours = build_backbone('vit_b_16', verbose=False).eval()
    load_backbone_state(ours, tv.state_dict(), 'torchvision vit_b_16')
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        tokens = tv._process_input(x) + tv.encoder.pos_embedding[:, 1:]  # the patch tokens torchvision's encoder gets
        assert torch.allclose(ours.stem(x).flatten(2).transpose(1, 2), tokens, atol=1e-5)
        y = tokens
        for block in tv.encoder.layers: y = block(y)
        torch.testing.assert_close(ours(x).flatten(2).transpose(1, 2), tv.encoder.ln(y), rtol=1e-4, atol=1e-4)
        assert ours(torch.randn(1, 3, 288, 144)).shape == (1, 768, 18, 9)  # interpolated position embeddings


def test_imagenet_weights_from_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    for name in NEW:  # absent: one clear message naming torchvision's file and the folder
        with pytest.raises(FileNotFoundError) as e: build_backbone(name, pretrained='imagenet', download=False)
        assert BACKBONES[name].files[0] in str(e.value) and str(hub_checkpoint_dir()) in str(e.value)
    tv = get_model('convnext_tiny')
    hub_checkpoint_dir().mkdir(parents=True)
    torch.save(tv.state_dict(), hub_checkpoint_dir() / 'convnext_tiny-983f1562.pth')  # torchvision's file name and keys
    ours = build_backbone('convnext_tiny', pretrained='imagenet', download=False, verbose=False)
    assert torch.equal(ours.layer3[8].block[0].weight, tv.features[5][8].block[0].weight)
    assert torch.equal(ours.layer4[0].downsample[1].bias, tv.features[6][1].bias)
    # a file of another architecture is refused with the list of what does not fit
    with pytest.raises(RuntimeError, match='missing keys'):
        build_backbone('swin_t', pretrained=hub_checkpoint_dir() / 'convnext_tiny-983f1562.pth', verbose=False)


def test_last_stride():
    "Shapes only: built and run on the meta device (no memory, no arithmetic)."
    with torch.device('meta'):
        x = torch.randn(1, 3, 128, 64)
        for name in ('convnext_tiny', 'swin_t', 'swin_v2_t'):
            s2 = build_backbone(name, last_stride=2, verbose=False)(x).shape[-2:]
            s1 = build_backbone(name, last_stride=1, verbose=False)(x).shape[-2:]
            assert (tuple(s1), tuple(s2)) == ((8, 4), (4, 2)), (name, s1, s2)
        # the same weights at both strides: a checkpoint trained at one loads at the other
        a, b = (build_backbone('convnext_tiny', last_stride=s, verbose=False) for s in (1, 2))
        assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    with pytest.raises(ValueError, match='does not apply'): build_backbone('vit_b_16', last_stride=1, verbose=False)
    with pytest.raises(ValueError, match='last_stride'): build_backbone('convnext_tiny', last_stride=3, verbose=False)


@pytest.mark.parametrize('arch', NEW)
def test_m3reid_training_step(arch):
    "M3-ReID on each new backbone: its default non-local placement, one SGD step on CPU at 64x32, unit embeddings."
    torch.manual_seed(0)
    net, crit = build_method('m3reid', 4, arch=arch, pretrained=None, verbose=False)
    assert net.non_local == BACKBONES[arch].non_local and hasattr(net, 'NL_2') and hasattr(net, 'NL_3')
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.01)
    x, pids, mids = torch.randn(4, 2, 3, 64, 32), torch.tensor([0, 0, 1, 1]), torch.tensor([1, 2, 1, 2])
    before = net.classifier.weight.detach().clone()
    loss, parts = crit(net.train()(x), pids, mids)
    opt.zero_grad(); loss.backward(); opt.step()
    assert torch.isfinite(loss) and not torch.equal(before, net.classifier.weight)
    with torch.no_grad(): emb = net.eval()(x[:, :1])
    assert emb.shape == (4, net.embedding_dim) and torch.allclose(emb.norm(dim=1), torch.ones(4), atol=1e-4)


def test_non_local_option():
    "None: the backbone's default placement; all zeros: none; four counts: where asked, checked against the stages."
    with torch.device('meta'):
        none, _ = build_method('m3reid', 4, arch='swin_t', non_local=(0, 0, 0, 0), verbose=False)
        assert not any(n.startswith('NL_') for n, _ in none.named_children())
        some, _ = build_method('m3reid', 4, arch='vit_b_16', non_local=(1, 0, 0, 2), verbose=False)
        assert len(some.NL_1) == 1 and len(some.NL_4) == 2 and some.NL_4[0].in_channels == 768
        with pytest.raises(ValueError, match='layer2 of convnext_tiny has 3 blocks'):
            build_method('m3reid', 4, arch='convnext_tiny', non_local=(0, 4, 0, 0), verbose=False)
        with pytest.raises(ValueError, match='no non-local'):
            build_method('baseline', 4, arch='convnext_tiny', non_local=(0, 1, 0, 0), verbose=False)
        base, _ = build_method('baseline', 4, arch='convnext_tiny', non_local=(0, 0, 0, 0), verbose=False)
        assert base.embedding_dim == 768

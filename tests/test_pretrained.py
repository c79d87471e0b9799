"""EfficientNet-Lite0's ImageNet weights: the name mapping, and that the loaded network is the trained one."""

from pathlib import Path

import pytest
import torch

from fashionclf.models.efficientnet import PretrainedError, check_mapping, create_lite0, load_imagenet_state, timm_name, weights_file


@pytest.mark.parametrize(
    "src,dst",
    [
        ("_conv_stem.weight", "conv_stem.weight"),
        ("_bn0.running_var", "bn1.running_var"),
        ("_blocks.0._depthwise_conv.weight", "blocks.0.0.conv_dw.weight"),
        ("_blocks.0._bn2.bias", "blocks.0.0.bn2.bias"),
        ("_blocks.3._bn0.weight", "blocks.2.0.bn1.weight"),  # blocks 1-2 are stage 1, 3-4 stage 2
        ("_blocks.15._project_conv.weight", "blocks.6.0.conv_pwl.weight"),
        ("_bn1.weight", "bn2.weight"),
        ("_fc.bias", "classifier.bias"),
    ],
)
def test_name_rules(src, dst):
    assert timm_name(src) == dst


def test_unknown_names_fail():
    with pytest.raises(PretrainedError, match="unexpected"):
        timm_name("_se.weight")
    with pytest.raises(PretrainedError, match="beyond"):
        timm_name("_blocks.16._bn0.weight")


def test_every_tensor_of_the_file_is_mapped():
    src = torch.load(weights_file(), map_location="cpu", weights_only=True)
    mapped = load_imagenet_state()  # raises unless every tensor matches timm's, in order, shape for shape
    assert len(src) == len(mapped) == 296
    for (k, v), (k2, v2) in zip(src.items(), mapped.items()):
        assert timm_name(k) == k2 and torch.equal(v, v2)


def test_check_mapping_catches_mismatches():
    ref = {"a.weight": torch.zeros(2, 3), "b.weight": torch.zeros(4)}
    check_mapping(["x", "y"], dict(ref), ref)
    with pytest.raises(PretrainedError, match="shape mismatches"):
        check_mapping(["x", "y"], {"a.weight": torch.zeros(3, 2), "b.weight": torch.zeros(4)}, ref)
    with pytest.raises(PretrainedError, match="incomplete"):
        check_mapping(["x"], {"a.weight": torch.zeros(2, 3)}, ref)
    with pytest.raises(PretrainedError, match="out of timm's order"):
        check_mapping(["x", "y"], {"b.weight": torch.zeros(4), "a.weight": torch.zeros(2, 3)}, ref)


def test_grayscale_stem_sums_rgb_filters():
    rgb = load_imagenet_state()["conv_stem.weight"]
    gray = create_lite0(10, in_chans=1, pretrained=True).conv_stem.weight.detach()
    assert gray.shape == (32, 1, 3, 3) and torch.allclose(gray, rgb.sum(1, keepdim=True))


def test_pretrained_features_differ_from_random():
    torch.manual_seed(0)
    x = torch.linspace(-1, 1, 64 * 64).reshape(1, 1, 64, 64).repeat(2, 1, 1, 1)
    x[1] = x[1].flip(-1)
    feats = {}
    for pretrained in (True, False):
        torch.manual_seed(0)
        m = create_lite0(10, 1, pretrained=pretrained).eval()
        with torch.no_grad():
            feats[pretrained] = m.forward_head(m.forward_features(x), pre_logits=True)
    cos = torch.nn.functional.cosine_similarity(feats[True], feats[False], dim=1)
    assert (cos < 0.9).all(), cos
    # ImageNet BatchNorm statistics, not the initial 0/1
    assert create_lite0(10, 1, pretrained=True).bn2.running_var.mean() != 1.0


def test_new_head_starts_at_uniform_predictions():
    """A zero head on pretrained features: loss ln(10) at the start, not the ~5 of timm's default head init."""
    m = create_lite0(10, 1, pretrained=True).eval()
    assert not m.classifier.weight.any() and not m.classifier.bias.any()
    with torch.no_grad():
        p = m(torch.rand(3, 1, 64, 64)).softmax(1)
    assert torch.allclose(p, torch.full_like(p, 0.1))


def _shared(*parts):
    return Path(__file__).resolve().parents[2].joinpath("shared", *parts)


@pytest.mark.data
@pytest.mark.skipif(not _shared("clothing-photos").exists(), reason="needs ../shared/clothing-photos")
def test_imagenet_head_recognises_tshirts():
    """On real T-shirt photos the loaded ImageNet classifier names 'jersey, T-shirt' (class 610); a random one cannot."""
    import timm
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    photos = sorted(_shared("clothing-photos", "validation", "t-shirt").glob("*.jpg"))[:12]
    assert len(photos) >= 8
    trained = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    trained.load_state_dict(load_imagenet_state())
    transform = create_transform(**resolve_data_config({}, model=trained))
    x = torch.stack([transform(Image.open(p).convert("RGB")) for p in photos])
    hits = {}
    for name, model in (("trained", trained), ("random", timm.create_model("tf_efficientnet_lite0", pretrained=False))):
        with torch.no_grad():
            top5 = model.eval()(x).topk(5, dim=1).indices
        hits[name] = (top5 == 610).any(1).float().mean().item()
    assert hits["trained"] >= 0.5 and hits["random"] <= 0.1, hits

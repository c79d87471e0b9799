import pytest
import torch
from helpers import assert_close_across_kernels

from fashionclf.models import at_resolution, count_params, create_model, list_models

# Hand-counted parameter totals of the seed's four architectures (weights + biases + BN affine).
EXPECTED_PARAMS = {
    "mlp": 784 * 128 + 128 + 128 * 10 + 10,
    "simple_cnn": (9 * 32 + 32) + (32 * 13 * 13 * 100 + 100) + (100 * 10 + 10),
    "tuned_cnn": (9 * 32 + 2 * 32) + (9 * 32 * 64 + 2 * 64) + (64 * 49 * 128 + 128) + (128 * 10 + 10),
    # three blocks of conv(no bias)+BN, conv(no bias)+BN, then Dense(128) and Dense(10)
    "advanced_cnn": sum(9 * i * o + 2 * o + 9 * o * o + 2 * o for i, o in [(1, 32), (32, 64), (64, 128)])
    + (128 * 128 + 128)
    + (128 * 10 + 10),
    # stem conv+BN, three conv+BN transitions, two residual blocks of two conv+BN each, Dense(10)
    "resnet": (9 * 32 + 64)
    + sum(9 * i * o + 2 * o for i, o in [(32, 64), (64, 128), (128, 256)])
    + sum(2 * (9 * c * c + 2 * c) for c in (64, 256))
    + (256 * 10 + 10),
}


@pytest.mark.parametrize("name", list_models())
def test_forward_backward(name):
    torch.manual_seed(0)
    model = create_model(name)
    x = torch.randn(4, 1, 28, 28)
    out = model(x)
    assert out.shape == (4, 10)
    out.logsumexp(1).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert count_params(model) > 0


@pytest.mark.parametrize("name", list_models())
def test_channels_last_bf16_matches_fp32(name):
    """The fast path (channels_last + bf16 autocast) computes the same function as plain fp32."""
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = torch.randn(8, 1, 28, 28)
    ref = model(x)
    fast = model.to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fast(x.contiguous(memory_format=torch.channels_last)).float()
    assert torch.allclose(out, ref, atol=0.1 * ref.abs().max().item())


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_param_counts(name):
    assert count_params(create_model(name)) == EXPECTED_PARAMS[name]


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="unknown model 'resnet1000'.*mlp.*tuned_cnn"):
        create_model("resnet1000")


@pytest.mark.parametrize("pixels", [7, 14, 21])
def test_at_resolution_discards_detail_finer_than_its_pixels(pixels):
    """The model sees the image as if captured at pixels x pixels: same shape and weights, less detail."""
    torch.manual_seed(0)
    model = at_resolution(torch.nn.Identity(), pixels)
    x = torch.rand(2, 1, 28, 28)
    out = model(x)
    assert out.shape == x.shape and not torch.allclose(out, x)
    # a constant image is unchanged (resampling averages with weights that sum to one) ...
    assert torch.allclose(model(torch.full_like(x, 0.3)), torch.full_like(x, 0.3), atol=1e-6)
    # ... and the result is fully determined by the pixels x pixels image
    low = torch.nn.functional.interpolate(x, size=(pixels, pixels), mode="area")
    assert torch.allclose(out, torch.nn.functional.interpolate(low, size=(28, 28), mode="bilinear", align_corners=False))
    assert at_resolution(torch.nn.Identity(), 28)(x) is x
    with pytest.raises(ValueError, match="resolution 40 px"):
        at_resolution(torch.nn.Identity(), 40)


def test_at_resolution_keeps_weight_names():
    plain = create_model("tuned_cnn")
    low = at_resolution(create_model("tuned_cnn"), 14)
    assert list(plain.state_dict()) == list(low.state_dict())


def _sig(name):
    import inspect

    from fashionclf.models import model_info

    return inspect.signature(model_info(name).build).parameters


def _build(name, **kw):
    from fashionclf.models import model_info

    if model_info(name).pretrained:
        kw["pretrained"] = False  # the declaration is about shapes; the ImageNet weights have their own test
    return create_model(name, **kw).eval()


@pytest.mark.parametrize("name", list_models())
def test_registry_declarations_hold_for_the_real_module(name):
    """What each model declares in the registry (as timm's pretrained configs) is what the module does."""
    from fashionclf.models import model_info, split_body_head

    info = model_info(name)
    sig = _sig(name)
    assert info.pretrained == ("pretrained" in sig)
    assert info.drop_path == ("drop_path" in sig)
    assert info.size_arg == ("image_size" in sig)
    if info.size_arg:
        assert sig["image_size"].default == info.input_size
    body, head = split_body_head(_build(name))
    assert info.body_head == bool(body) and head
    with torch.no_grad():
        for c in info.in_chans:
            assert _build(name, in_chans=c)(torch.zeros(2, c, 28, 28)).shape == (2, 10)
        side = 48
        kw = {"image_size": side} if info.size_arg else {}
        if info.flexible_size:
            assert _build(name, in_chans=3, **kw)(torch.zeros(2, 3, side, side)).shape == (2, 10)
        else:
            with pytest.raises(RuntimeError):
                _build(name, in_chans=3)(torch.zeros(2, 3, side, side))


@pytest.mark.parametrize("name", list_models())
def test_a_saved_run_loads_back_exactly_without_a_throwaway_init(name, tmp_path):
    """load_run builds the network on the meta device and assigns the saved tensors: every parameter and
    buffer is real afterwards, and the loaded run computes what the saved model computed."""
    from fashionclf.core.config import TrainConfig
    from fashionclf.engine.runs import load_run, save_run
    from fashionclf.models import build_model

    cfg = TrainConfig(model=name, model_kwargs={"pretrained": False} if _sig(name).get("pretrained") else {})
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    run = load_run(save_run(tmp_path / "run", model, cfg, {}, [], [f"c{i}" for i in range(10)], {}))
    tensors = list(run.model.parameters()) + list(run.model.buffers())
    assert tensors and not any(t.is_meta for t in tensors)
    assert all(t.dtype == torch.float32 for t in run.model.parameters())
    saved, loaded = model.state_dict(), run.model.state_dict()
    assert list(saved) == list(loaded) and all(torch.equal(saved[k], loaded[k]) for k in saved)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        got, want = run.model(x), model(x)
        # The loaded run computes channels_last (as trained): the same function through other kernels, whose fp32
        # rounding differs by CPU kind (about 1e-4 on logits near 20 with AVX-512). Across kernels: relative to scale.
        assert_close_across_kernels(got, want)
        if cfg.channels_last:  # the same kernels: the original in the loaded run's memory format agrees tightly
            same = model.to(memory_format=torch.channels_last)(x)
            assert torch.allclose(got, same, rtol=1e-6, atol=1e-6 * same.abs().max().item())

"""Networks: parameter counts of the published layouts, shapes, input checks, tracing,
and loading an ImageNet Swin checkpoint from a local file."""

from __future__ import annotations

import pytest
import torch

from custom.networks import SwinUnet, UNeXt, load_pretrained_swin, with_pretrained
from custom.networks.unext import shift_groups


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def tiny_swin(**kw) -> SwinUnet:
    args = dict(img_size=64, in_channels=1, out_channels=3, embed_dim=24, num_heads=(1, 2, 3, 4), window_size=4)
    args.update(kw)
    return SwinUnet(**args)


def test_unext_published_parameter_count():
    assert n_params(UNeXt(in_channels=3, out_channels=1)) == 1_471_921


def test_unext_greyscale_input_is_native():
    m = UNeXt(in_channels=1, out_channels=1)
    assert m.enc1.weight.shape[1] == 1
    # only the first conv differs from the 3-channel layout: 2 input channels x 16 x 3 x 3 fewer
    assert n_params(m) == 1_471_921 - 2 * 16 * 9


@pytest.mark.parametrize("size", [(32, 32), (64, 96), (128, 64)])
@pytest.mark.parametrize("classes", [1, 3])
def test_unext_output_shape(size, classes):
    m = UNeXt(1, classes).eval()
    with torch.no_grad():
        y = m(torch.rand(2, 1, *size))
    assert y.shape == (2, classes, *size)


def test_unext_rejects_sides_not_divisible_by_32():
    with pytest.raises(ValueError, match="divisible by 32"):
        UNeXt(1, 2)(torch.rand(1, 1, 64, 70))
    with pytest.raises(ValueError, match="1 x H x W"):
        UNeXt(1, 2)(torch.rand(1, 3, 64, 64))


def test_shift_groups_moves_each_group_by_its_offset():
    x = torch.zeros(1, 5, 7, 7)
    x[:, :, 3, 3] = 1.0  # one bright pixel in every group
    y = shift_groups(x, dim=2, groups=5)
    for g, offset in enumerate(range(-2, 3)):
        assert y[0, g, 3 + offset, 3] == 1.0 and y[0, g].sum() == 1.0
    z = shift_groups(x, dim=3, groups=5)
    for g, offset in enumerate(range(-2, 3)):
        assert z[0, g, 3, 3 + offset] == 1.0
    # content shifted past the border is dropped (zero fill, no wrap-around)
    edge = torch.zeros(1, 5, 4, 4)
    edge[:, :, 3, 0] = 1.0
    assert shift_groups(edge, dim=2)[0, 4].sum() == 0.0


def test_swin_unet_reference_parameter_count():
    m = SwinUnet(img_size=224, in_channels=3, out_channels=4)
    assert abs(n_params(m) - 27.17e6) / 27.17e6 < 0.005


@pytest.mark.parametrize("img_size,window", [(224, 7), (448, 7)])
def test_swin_unet_reference_sizes(img_size, window):
    m = SwinUnet(
        img_size=img_size, in_channels=1, out_channels=2, window_size=window, embed_dim=24, num_heads=(1, 2, 3, 4)
    ).eval()
    with torch.no_grad():
        assert m(torch.rand(1, 1, img_size, img_size)).shape == (1, 2, img_size, img_size)


@pytest.mark.parametrize("img_size,window", [(64, 4), (96, 3), (128, 4)])
def test_swin_unet_small_sizes(img_size, window):
    m = tiny_swin(img_size=img_size, window_size=window).eval()
    with torch.no_grad():
        assert m(torch.rand(2, 1, img_size, img_size)).shape == (2, 3, img_size, img_size)


def test_swin_unet_rejects_wrong_input():
    with pytest.raises(ValueError, match="divisible by 32"):
        SwinUnet(img_size=100)
    with pytest.raises(ValueError, match="expects"):
        tiny_swin()(torch.rand(1, 1, 32, 32))


def _timm_swin_tiny_state(tmp_path, layout: str):
    import timm

    torch.manual_seed(0)
    ref = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False)
    state = ref.state_dict()
    if layout == "microsoft":  # original layout: downsample at the end of a stage, plain head
        import re

        state = {
            re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k).replace(
                "head.fc.", "head."
            ): v
            for k, v in state.items()
        }
        assert "layers.0.downsample.reduction.weight" in state
        state = {"model": state}
    path = tmp_path / f"swin_tiny_{layout}.pth"
    torch.save(state, path)
    return ref, path


@pytest.mark.parametrize("layout", ["timm", "microsoft"])
def test_pretrained_swin_round_trip(tmp_path, layout):
    ref, path = _timm_swin_tiny_state(tmp_path, layout)
    model = SwinUnet(img_size=224, in_channels=3, out_channels=4)
    report = load_pretrained_swin(model, str(path))
    # encoder weights equal the checkpoint's, stage by stage (stage 3 of swin_tiny has 6 blocks, ours 2)
    ours, theirs = model.encoder.state_dict(), ref.state_dict()
    for key in ours:
        if key in theirs and "relative_position_index" not in key and "attn_mask" not in key:
            assert torch.equal(ours[key], theirs[key]), key
    assert torch.equal(model.encoder.layers[1].downsample.reduction.weight, ref.layers[1].downsample.reduction.weight)
    # decoder stages mirror the encoder blocks of the same width, as the reference does
    for k in range(3):
        d = model.decoder_stage_of(k)
        for b in range(2):
            assert torch.equal(model.decoder[d].stage.blocks[b].mlp.fc1.weight, ref.layers[k].blocks[b].mlp.fc1.weight)
    assert any(k.startswith("layers.2.blocks.5") for k in report["skipped"])
    assert len(report["encoder"]) > 100 and len(report["decoder"]) > 50


def test_pretrained_swin_greyscale_sums_rgb_filters(tmp_path):
    ref, path = _timm_swin_tiny_state(tmp_path, "timm")
    model = with_pretrained(SwinUnet(img_size=224, in_channels=1, out_channels=2), str(path))
    expected = ref.patch_embed.proj.weight.sum(dim=1, keepdim=True)
    assert torch.allclose(model.encoder.patch_embed.proj.weight, expected)


def test_pretrained_swin_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_pretrained_swin(tiny_swin(), str(tmp_path / "missing.pth"))
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth"):
        load_pretrained_swin(tiny_swin(), str(bad))
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(ValueError, match="not a Swin"):
        load_pretrained_swin(tiny_swin(), str(other))
    _, path = _timm_swin_tiny_state(tmp_path, "timm")
    with pytest.raises(ValueError, match="fit"):  # embed 24 cannot take a 96-wide checkpoint
        load_pretrained_swin(tiny_swin(), str(path))


@pytest.mark.parametrize("make", [lambda: UNeXt(1, 3), lambda: tiny_swin()], ids=["unext", "swin_unet"])
def test_networks_trace_like_eager(make):
    torch.manual_seed(0)
    m = make().eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        traced = torch.jit.trace(m, x)
        x2 = torch.rand(2, 1, 64, 64)
        assert torch.allclose(traced(x2), m(x2), atol=1e-5)

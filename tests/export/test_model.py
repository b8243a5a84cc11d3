"""The model matches the official ISNetDIS layout and behaves as the official forward does."""

import json
from pathlib import Path

import pytest
import torch

from isnet.export.model import ARCHS, RSU, ISNet, ISNetGTEncoder, count_macs

MANIFEST = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "isnet_state_dict.json"


@pytest.fixture(scope="module")
def official() -> ISNet:
    torch.manual_seed(0)
    return ISNet("isnet").eval()


def test_state_dict_matches_reference_manifest(official):
    if not MANIFEST.exists():
        pytest.skip(f"reference manifest not found at {MANIFEST}")
    reference = json.loads(MANIFEST.read_text())
    ours = {k: list(v.shape) for k, v in official.state_dict().items()}
    assert set(ours) == set(reference)
    assert len(ours) == 798
    conflicts = {k: (ours[k], reference[k]) for k in reference if ours[k] != reference[k]}
    assert conflicts == {}


def test_parameter_count_and_macs_match_published_figures(official):
    # ISNET.md: 44.05 M parameters, about 15.6 G MACs at 3x320x320 with all six heads.
    assert sum(p.numel() for p in official.parameters()) / 1e6 == pytest.approx(44.05, abs=0.01)
    assert count_macs(official, 320, 320) / 1e9 == pytest.approx(15.6, abs=0.05)


def test_training_mode_returns_six_maps_and_six_features(official):
    x = torch.rand(1, 3, 97, 131) - 0.5
    with torch.no_grad():
        maps, features = official(x)
    assert [m.shape for m in maps] == [torch.Size([1, 1, 97, 131])] * 6
    assert all(0 <= float(m.min()) and float(m.max()) <= 1 for m in maps)
    assert [f.shape[1] for f in features] == [64, 64, 128, 256, 512, 512]
    # stage1d runs at half resolution (the unused pool_in quirk), ceil-mode pools below it.
    assert features[0].shape[2:] == (49, 66)
    assert features[5].shape[2:] == (2, 3)


def test_deploy_mode_equals_first_training_output_and_skips_other_heads(official):
    x = torch.rand(2, 3, 64, 80) - 0.5
    called = []
    hooks = [getattr(official, f"side{i}").register_forward_hook(lambda m, i, o, n=i: called.append(n))
             for i in range(1, 7)]
    try:
        with torch.no_grad():
            maps, _ = official(x)
            called.clear()
            official.deploy = True
            deployed = official(x)
    finally:
        official.deploy = False
        for h in hooks:
            h.remove()
    assert called == [1]
    assert deployed.shape == (2, 1, 64, 80)
    torch.testing.assert_close(deployed, maps[0], rtol=0, atol=0)


def test_rsu_written_once_covers_all_heights():
    for height in (4, 5, 6, 7):
        block = RSU(height, 8, 4, 8)
        names = {n.split(".")[0] for n, _ in block.named_parameters()}
        expected = {"rebnconvin"} | {f"rebnconv{i}" for i in range(1, height + 1)} | {
            f"rebnconv{i}d" for i in range(1, height)}
        assert names == expected
        assert block(torch.rand(1, 8, 33, 21)).shape == (1, 8, 33, 21)
    dilated = RSU(4, 8, 4, 8, dilated=True)
    assert [dilated.rebnconv1.conv_s1.dilation[0], dilated.rebnconv4.conv_s1.dilation[0]] == [1, 8]
    assert dilated.rebnconv3d.conv_s1.dilation[0] == 4


@pytest.mark.parametrize("arch", list(ARCHS))
def test_gt_encoder_features_match_decoder_features(arch):
    torch.manual_seed(0)
    net, encoder = ISNet(arch).eval(), ISNetGTEncoder(arch).eval()
    with torch.no_grad():
        _, decoder_features = net(torch.rand(1, 3, 75, 64))
        side_maps, gt_features = encoder(torch.rand(1, 1, 75, 64))
    assert [f.shape for f in gt_features] == [f.shape for f in decoder_features]
    assert [m.shape for m in side_maps] == [torch.Size([1, 1, 75, 64])] * 6

"""Weights from torchvision's ResNets and from SpikeKD's own layout, through `create_model(..., weights=...)`."""

import pytest
import torch
from torch import nn

from models import create_model
from models.weights import load_weights, read_state_dict


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """`model` with random BatchNorm statistics and affine parameters, so that a misplaced one changes the logits."""
    generator = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
    return model.eval()


@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
@pytest.mark.parametrize("source", ["model", "state_dict", "file"])
def test_torchvision_resnet_gives_the_same_logits(torchvision, tmp_path, name, source):
    torch.manual_seed(0)
    reference = randomized(getattr(torchvision.models, name)(num_classes=7))
    weights = {"model": reference, "state_dict": reference.state_dict(), "file": tmp_path / "w.pth"}[source]
    torch.save(reference.state_dict(), tmp_path / "w.pth")
    net = create_model(name, num_classes=7, stem="imagenet", weights=weights).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x)
    torch.testing.assert_close(net(x), expected, atol=1e-5, rtol=1e-5)


def test_snn_twin_takes_the_same_weights(torchvision):
    reference = torchvision.models.resnet18(num_classes=5)
    ann = create_model("resnet18", num_classes=5, stem="imagenet", weights=reference)
    snn = create_model("resnet18", kind="snn", num_classes=5, stem="imagenet", weights=reference)
    for (name, a), (_, s) in zip(ann.state_dict().items(), snn.state_dict().items(), strict=True):
        assert torch.equal(a, s), name


def test_head_is_replaced_when_classes_differ(torchvision):
    reference = torchvision.models.resnet18(num_classes=1000)
    net = create_model("resnet18", num_classes=3, stem="imagenet")
    fresh_head = net.head.fc.weight.detach().clone()
    loaded = load_weights(net, reference)
    assert loaded.head_replaced and loaded.source_classes == 1000 and loaded.layout == "torchvision-resnet"
    assert torch.equal(net.head.fc.weight, fresh_head)
    assert torch.equal(net.stages[3][1].conv2.weight, reference.layer4[1].conv2.weight)
    assert torch.equal(net.stages[1][0].shortcut.bn.running_var, reference.layer2[0].downsample[1].running_var)


def test_spikekd_layout_loads_from_a_plain_state_dict_and_a_wrapped_one(tmp_path):
    torch.manual_seed(0)
    source = randomized(create_model("tiny_resnet", num_classes=4))
    torch.save(source.state_dict(), tmp_path / "plain.pt")
    wrapped = {"model": {f"module.{k}": v for k, v in source.state_dict().items()}, "step": 3}
    torch.save(wrapped, tmp_path / "wrapped.pt")
    x = torch.randn(2, 3, 8, 8)
    for path in ("plain.pt", "wrapped.pt"):
        net = create_model("tiny_resnet", num_classes=4, weights=tmp_path / path).eval()
        assert torch.equal(net(x), source(x)), path


def test_files_are_read_as_tensors_only(tmp_path):
    """weights_only=True: a pickled object that is not plain data is refused, not run."""
    torch.save({"model": create_model("tiny_resnet")}, tmp_path / "pickled_module.pt")
    refused = r"weights_only=True.*Unsupported global.*ResNet.*torch.save\(model.state_dict\(\), path\)"
    with pytest.raises(ValueError, match=refused):
        read_state_dict(tmp_path / "pickled_module.pt")
    with pytest.raises(FileNotFoundError, match="weights: no file"):
        read_state_dict(tmp_path / "absent.pt")


def test_mismatches_are_clear_errors(torchvision):
    missing = r"do not fit this architecture: 96 of its entries missing \[stages.0.2.bn1.bias, .*0 unexpected"
    with pytest.raises(ValueError, match=missing):
        create_model("resnet34", stem="imagenet", weights=torchvision.models.resnet18())
    with pytest.raises(ValueError, match="stem.conv.weight has shape .*build the net with stem='imagenet'"):
        create_model("resnet18", weights=torchvision.models.resnet18())
    with pytest.raises(ValueError, match="torchvision VGG weights cannot load .* max pools"):
        create_model("vgg11", weights=torchvision.models.vgg11_bn())
    with pytest.raises(ValueError, match=r"names of no known layout \(e.g. \['weight'\]\)"):
        create_model("tiny_resnet", weights={"weight": torch.zeros(1)})
    with pytest.raises(TypeError, match="weights must be an nn.Module, a state_dict .* got int"):
        create_model("tiny_resnet", weights=3)

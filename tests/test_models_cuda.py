"""The models, HybridNet and `python -m distill.run` on a CUDA device, against the same computation on the CPU.

Marked `cuda`: they skip without a GPU and run in the test stage of `bench/gpu.sh`. On CUDA the spike stream takes
other paths than on the CPU (time folded into one cuDNN call, BatchNorm out of place), so these are the checks of
that code; the Triton neuron in a model is checked against the reference in tests/test_models_rate.py.
"""

import copy

import pytest
import torch
import torch.nn.functional as F

from distill.run import main
from models import HybridNet, create_model

pytestmark = pytest.mark.cuda


def train_step(net, x, y, mode):
    """Logits, every parameter's gradient and the BatchNorm running statistics after one forward and backward."""
    net.zero_grad()
    logits = net(x, mode=mode)
    F.cross_entropy(logits, y).backward()
    grads = {n: p.grad.detach().cpu() for n, p in net.named_parameters() if p.grad is not None}
    buffers = {n: b.detach().cpu() for n, b in net.named_buffers()}
    return logits.detach().cpu(), grads, buffers


@pytest.mark.parametrize("mode", ["bptt", "rate"])
@pytest.mark.parametrize("model", ["tiny_resnet", "tiny_vgg"])
def test_model_on_cuda_matches_cpu(model, mode):
    """fp64 and the reference neuron on both devices: the layers' CUDA paths agree with the CPU's to rounding."""
    torch.manual_seed(0)
    cpu_net = create_model(model, kind="snn", T=4, backend="reference").double().train()
    cuda_net = copy.deepcopy(cpu_net).cuda()
    x = torch.rand(8, 3, 16, 16, dtype=torch.float64)
    y = torch.randint(0, 10, (8,))
    expected = train_step(cpu_net, x, y, mode)
    got = train_step(cuda_net, x.cuda(), y.cuda(), mode)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-9, atol=1e-9)
    for name, grad in expected[1].items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(got[1][name], grad, rtol=1e-7, atol=1e-9, msg=name)
    for name, buffer in expected[2].items():
        torch.testing.assert_close(got[2][name], buffer, rtol=1e-9, atol=1e-9, msg=name)


def test_hybrid_step_on_cuda_matches_cpu():
    """HybridNet (every split, student in rate mode): the logits of every hybrid and the student's gradients."""
    torch.manual_seed(0)
    student = create_model("tiny_resnet", kind="snn", T=3, backend="reference")
    teacher = create_model("tiny_resnet", kind="ann")
    cpu_net = HybridNet(student, teacher).double().train()
    cuda_net = copy.deepcopy(cpu_net).cuda()
    x = torch.rand(6, 3, 16, 16, dtype=torch.float64)
    outputs = {}
    for device, net in (("cpu", cpu_net), ("cuda", cuda_net)):
        out = net(x.to(device), mode="rate")
        sum(logits.sum() for name, logits in out.items() if name != "teacher").backward()
        grads = {n: p.grad.cpu() for n, p in net.named_parameters() if p.grad is not None}
        outputs[device] = ({name: logits.detach().cpu() for name, logits in out.items()}, grads)
    assert outputs["cuda"][0].keys() == outputs["cpu"][0].keys()
    for name, logits in outputs["cpu"][0].items():
        torch.testing.assert_close(outputs["cuda"][0][name], logits, rtol=1e-9, atol=1e-9, msg=name)
    assert outputs["cuda"][1].keys() == outputs["cpu"][1].keys()
    for name, grad in outputs["cpu"][1].items():
        torch.testing.assert_close(outputs["cuda"][1][name], grad, rtol=1e-7, atol=1e-9, msg=name)


@pytest.mark.parametrize("train", ["bptt", "rate"])
def test_distill_run_on_cuda(tmp_path, train):
    """The training command on the GPU for a few steps: the blockwise method, the Triton kernels."""
    args = ["--device", "cuda", "--train", train, "--train-subset", "128", "--test-subset", "64"]
    args += ["--batch-size", "32", "--max-steps", "3", "--teacher-epochs", "1", "--progress", "off"]
    results = main([*args, "--out", str(tmp_path)])
    assert 0.0 <= results["student_acc"] <= 1.0 and 0 < results["firing_rate"] < 1

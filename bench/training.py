"""One training step of an SNN in `bptt`, `rate`, `blockwise` (rate-mode hybrids) or `sj-bptt` mode, and its peak
memory.

    step = build_step(TrainCase("tiny_resnet", "rate", T=4, batch=16, image=32), device)
    step()  # forward, loss, backward, SGD step

A step: forward on a random batch [B, 3, H, W] (direct encoding), cross-entropy, backward, SGD with momentum.
`blockwise` is the hybrid block-wise replacement of Yang et al.: `models.HybridNet(student, teacher)` with every
split, the student in rate mode, the loss the sum of the cross-entropies of the student and of every hybrid
(the frozen teacher's own logits carry no gradient and are left out). `sj-bptt` is what a SpikingJelly user trains
today: the same network with SpikingJelly 2.0's multi-step `LIFNode` (its default implementation on the device:
torch on the CPU, its Triton kernels on CUDA) in place of every SpikeKD neuron, trained by BPTT.

Peak memory: on CUDA `torch.cuda.max_memory_allocated` over one step, in process. On CPU the allocator gives
nothing comparable, so each case runs in its own process (`python -m bench.training CASE_JSON STEPS THREADS`) that
reports its peak resident size over the steps (VmHWM) and its resident size before the first step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from distill.memory import peak_resident_bytes, reset_peak_resident, resident_bytes

TRAIN_MODES = ("bptt", "rate", "blockwise", "sj-bptt")
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class TrainCase:
    model: str  # models.create_model name
    mode: str  # one of TRAIN_MODES
    T: int
    batch: int
    image: int  # square input side
    num_classes: int = 10


def models_import_error() -> str | None:
    """Why `models` cannot be imported here, or None when it can."""
    try:
        import models  # noqa: F401
    except ImportError as error:
        return f"the models package cannot be imported ({error})"
    return None


def build_step(case: TrainCase, device: torch.device) -> Callable[[], torch.Tensor]:
    """A closure running one training step of `case` on `device`; returns the (detached) loss."""
    import models

    if case.mode not in TRAIN_MODES:
        raise ValueError(f"mode must be one of {list(TRAIN_MODES)}, got {case.mode!r}")
    torch.manual_seed(0)
    student = models.create_model(case.model, kind="snn", num_classes=case.num_classes, T=case.T)
    if case.mode == "sj-bptt":
        student = with_spikingjelly_neurons(student)
    if case.mode == "blockwise":
        teacher = models.create_model(case.model, kind="ann", num_classes=case.num_classes)
        net = models.HybridNet(student, teacher)
        params = list(net.student_parameters())
    else:
        net, params = student, list(student.parameters())
    net = net.to(device).train()
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    x = torch.rand(case.batch, 3, case.image, case.image, device=device)
    y = torch.randint(0, case.num_classes, (case.batch,), device=device)
    forward_mode = {"blockwise": "rate", "sj-bptt": "bptt"}.get(case.mode, case.mode)

    def step() -> torch.Tensor:
        out = net(x, mode=forward_mode)
        if isinstance(out, dict):
            loss = sum(F.cross_entropy(logits, y) for name, logits in out.items() if name != "teacher")
        else:
            loss = F.cross_entropy(out, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def with_spikingjelly_neurons(net: torch.nn.Module) -> torch.nn.Module:
    """`net` with every SpikeKD LIF replaced by SpikingJelly's multi-step LIFNode of the same options."""
    from models.neuron import LIF

    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LIF):
                parent._modules[name] = SpikingJellyLIF(child.options)
    return net


def _spikingjelly_lif_class():
    from models.neuron import LIF

    class SpikingJellyLIF(LIF):
        """SpikingJelly's LIFNode (step_mode="m") behind SpikeKD's neuron interface: [T, B, ...] -> spikes, BPTT only,
        its membrane reset before every sequence (SpikingJelly keeps it between calls)."""

        def __init__(self, options):
            from spikingjelly.activation_based import neuron, surrogate

            if options.surrogate != "sigmoid":
                raise ValueError(f"only the sigmoid surrogate is mapped to SpikingJelly, got {options.surrogate!r}")
            super().__init__(**vars(options))
            self.node = neuron.LIFNode(
                tau=options.tau,
                decay_input=options.decay_input,
                v_threshold=options.v_threshold,
                v_reset=options.v_reset,
                surrogate_function=surrogate.Sigmoid(alpha=options.surrogate_alpha),
                detach_reset=options.detach_reset,
                step_mode="m",
            )

        def forward(self, x, mode=None):
            if not isinstance(x, torch.Tensor) or mode not in (None, "bptt", "eval"):
                raise ValueError("SpikingJelly's LIFNode runs sequences by BPTT only (no rate mode)")
            self.node.reset()
            return self.node(x)

    return SpikingJellyLIF


def SpikingJellyLIF(options):  # noqa: N802 - a class built on first use, so that SpikingJelly stays optional
    return _spikingjelly_lif_class()(options)


def cuda_peak_memory(step: Callable[[], torch.Tensor], device: torch.device) -> dict[str, int]:
    """Peak bytes allocated over one step (after a warm-up step has created gradients and optimizer state)."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return {"peak_bytes": torch.cuda.max_memory_allocated(device), "baseline_bytes": before}


def cpu_peak_memory(case: TrainCase, steps: int = 2, timeout: float = 600.0) -> dict[str, float]:
    """Runs `steps` training steps of `case` in a fresh process (with this one's CPU threads); its peak and
    pre-step resident sizes in bytes, and its mean seconds per step."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    # glibc: every block of 64 KiB or more its own mapping, returned to the OS when freed, so that the resident size
    # follows the live tensors (with its default, adaptive threshold freed blocks stay resident and a run's peak
    # varies by tens of MiB with the allocation history).
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    cmd = [sys.executable, "-m", "bench.training", json.dumps(asdict(case)), str(steps), str(torch.get_num_threads())]
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> None:
    if len(argv) != 3:
        raise SystemExit("usage: python -m bench.training CASE_JSON STEPS THREADS  (runs on the CPU, prints peak RSS)")
    case = TrainCase(**json.loads(argv[0]))
    torch.set_num_threads(int(argv[2]))
    step = build_step(case, torch.device("cpu"))
    baseline = resident_bytes()
    reset_peak_resident()
    start = time.perf_counter()
    for _ in range(int(argv[1])):
        step()
    seconds = (time.perf_counter() - start) / int(argv[1])
    print(json.dumps({"peak_bytes": peak_resident_bytes(), "baseline_bytes": baseline, "step_s": seconds}))


if __name__ == "__main__":
    main(sys.argv[1:])

"""The LIF neuron as a stateless, time-first nn.Module over the ops of `kernels`.

It takes the whole sequence [T, B, ...] and starts from its reset potential every call: there is no membrane state
to reset between batches. Three ways to run it (docs/design.md, "Rate-based backpropagation"):

- `bptt`: spikes = lif_multistep(x) with a graph through time (keeps one [T, B, ...] tensor for backward);
- `rate`: on `Streams` (spikes, rate): lif_rate on the spike stream gives (spikes', rate', elig) without a graph
  (`lif_rate_`, over the input, where the input's spikes are an owned temporary), and the rate stream becomes
  rate_ste(rate, rate', elig), valued rate' with d rate'/d rate = elig;
- `eval`: lif_multistep under no_grad, which saves nothing.

`FiringRates` records the mean firing rate of every LIF module of a network through forward hooks.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
from torch import nn

from kernels import LIFOptions, lif_multistep, lif_rate, lif_rate_, rate_ste
from kernels.backend import check_backend
from models.streams import Streams

MODES = ("bptt", "rate", "eval")


def check_mode(mode: str | None) -> None:
    if mode is not None and mode not in MODES:
        raise ValueError(f"mode must be None or one of {list(MODES)}, got {mode!r}")


class LIF(nn.Module):
    """Leaky integrate-and-fire neurons: x [T, B, ...] -> spikes [T, B, ...], or Streams -> Streams in rate mode.

    H_t = (1 - 1/tau) V_{t-1} + X_t,  S_t = [H_t >= v_threshold],  V_t = H_t - v_threshold S_t (soft reset) or
    v_reset where it fired (hard reset); see docs/design.md, "The neuron", for decay_input and the surrogates.
    """

    def __init__(
        self,
        tau: float = 2.0,
        v_threshold: float = 1.0,
        v_reset: float | None = None,
        decay_input: bool = False,
        detach_reset: bool = True,
        surrogate: str = "sigmoid",
        alpha: float | None = None,
        backend: str = "auto",
    ):
        super().__init__()
        self.options = LIFOptions(tau, v_threshold, v_reset, decay_input, detach_reset, surrogate, alpha)
        check_backend(backend)
        self.backend = backend

    def _kwargs(self) -> dict:
        return dict(asdict(self.options), backend=self.backend)

    def forward(self, x: torch.Tensor | Streams, mode: str | None = None) -> torch.Tensor | Streams:
        """mode None follows the input: Streams -> rate, a tensor -> bptt (which saves nothing without a graph).

        A tensor [T, B, ...] with mode="rate" is first split into Streams(x, mean_t x).
        """
        check_mode(mode)
        if isinstance(x, Streams):
            if mode not in (None, "rate"):
                raise ValueError(f"a Streams input runs in mode 'rate', got mode={mode!r}")
            return self._rate(x)
        if mode == "rate":
            return self._rate(Streams.from_sequence(x))
        if mode == "eval":
            with torch.no_grad():
                return lif_multistep(x, **self._kwargs())
        return lif_multistep(x, **self._kwargs())

    def _rate(self, x: Streams) -> Streams:
        """The spikes are written over the input current where it is an owned temporary (`Streams.owned`)."""
        spike_pass = lif_rate_ if x.reusable else lif_rate
        spikes, rate, elig = spike_pass(x.spikes, **self._kwargs())
        return Streams(spikes, rate_ste(x.rate, rate, elig, backend=self.backend), owned=True)

    def extra_repr(self) -> str:
        o = self.options
        reset = "soft" if o.v_reset is None else f"hard({o.v_reset})"
        return f"tau={o.tau}, v_threshold={o.v_threshold}, reset={reset}, surrogate={o.surrogate}"


class FiringRates:
    """Mean firing rate of every LIF module of `net`, over all forward calls made inside the `with` block.

    with FiringRates(net) as fr:
        net(x)
    fr.rates()  # {"stages.0.0.act1": 0.12, ...}
    """

    def __init__(self, net: nn.Module):
        self.net = net
        self._spikes: dict[str, float] = {}
        self._neurons: dict[str, int] = {}
        self._handles = []

    def __enter__(self) -> FiringRates:
        for name, module in self.net.named_modules():
            if isinstance(module, LIF):
                self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str):
        def record(module, inputs, output):
            spikes = output.spikes if isinstance(output, Streams) else output
            self._spikes[name] = self._spikes.get(name, 0.0) + float(spikes.detach().double().sum())
            self._neurons[name] = self._neurons.get(name, 0) + spikes.numel()

        return record

    def rates(self) -> dict[str, float]:
        """Layer name -> spikes per neuron per timestep, in [0, 1]."""
        return {name: self._spikes[name] / max(self._neurons[name], 1) for name in self._spikes}

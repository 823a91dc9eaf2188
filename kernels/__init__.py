"""SpikeKD's neuron ops: fused Triton kernels on CUDA, pure-PyTorch twins elsewhere (`kernels.reference`).

from kernels import lif_multistep, lif_rate, lif_rate_, rate_ste, rate_reduce, poisson_encode
"""

from kernels.backend import BACKENDS
from kernels.encode import poisson_encode
from kernels.lif import lif_multistep
from kernels.options import SURROGATES, LIFOptions
from kernels.rate import lif_rate, lif_rate_, rate_reduce, rate_ste

__all__ = [
    "BACKENDS",
    "SURROGATES",
    "LIFOptions",
    "lif_multistep",
    "lif_rate",
    "lif_rate_",
    "poisson_encode",
    "rate_reduce",
    "rate_ste",
]

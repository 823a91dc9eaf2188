"""SpikeKD's models: ANN/SNN twin ResNets and VGGs, the LIF neuron and its layers, hybrid (block-swap) models.

from models import create_model, list_models, HybridNet
teacher = create_model("resnet18", kind="ann")
student = create_model("resnet18", kind="snn", T=4, tau=2.0)
student.load_state_dict(teacher.state_dict())
logits, features = student(x, mode="rate", return_features=True)
"""

from models.encoding import PoissonEncoder, direct_encode
from models.hybrid import HybridNet
from models.layers import BatchNorm2d, make_layers
from models.network import Head, Network
from models.neuron import LIF, MODES, FiringRates
from models.registry import create_model, list_models
from models.streams import Streams
from models.student import Student, export, load_student
from models.weights import LoadedWeights, load_weights

__all__ = [
    "BatchNorm2d",
    "FiringRates",
    "Head",
    "HybridNet",
    "LIF",
    "LoadedWeights",
    "MODES",
    "Network",
    "PoissonEncoder",
    "Streams",
    "Student",
    "create_model",
    "direct_encode",
    "export",
    "list_models",
    "load_student",
    "load_weights",
    "make_layers",
]

"""SpikeKD's distillation: data sets, losses, the trainer, checkpoints, evaluation and ``python -m distill.run``."""

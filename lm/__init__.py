"""lm: pretraining and finetuning transformer language models with JAX/Flax."""

__version__ = "0.1.0"

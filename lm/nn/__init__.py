"""Flax (linen) building blocks: attention, layers, transformer stacks, partitioning."""

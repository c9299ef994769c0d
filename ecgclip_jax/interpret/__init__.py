"""Seeing what the model sees: saliency, 12-lead plots, curves and embedding maps."""

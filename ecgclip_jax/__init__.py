"""ecgclip_jax: ECG–report contrastive pre-training in JAX/Flax.

The Python API (see README, "Use from Python"):

    import ecgclip_jax
    model = ecgclip_jax.load("workdirs/demo")          # or "workdirs/demo@400", or an export
    embeddings = model.embed_ecg(signals, sample_rate=500)
    scores = model.zero_shot(signals, sample_rate=500)

Loaded on first use, so `import ecgclip_jax.data...` (the dataset builders) stays light.
"""

__all__ = ["load", "Model", "Inputs"]


def __getattr__(name: str):
  if name == "load":
    from ecgclip_jax.api import load
    return load
  if name in ("Model", "Inputs"):
    from ecgclip_jax import inference
    return getattr(inference, name)
  raise AttributeError(f"module 'ecgclip_jax' has no attribute {name!r}")

"""The pure-ML core of thalamus: a perceptive router (encoder + regression head) that predicts
each expert's loss for a prompt, the constrained routing objective, prompt flags, training,
metrics and the immutable checkpoint format.

This package imports torch/transformers/peft/numpy/safetensors only — never the database,
HTTP, or any other thalamus package. Submodules are imported lazily by callers
(``from router.model import Router``) so that ``router.flags``/``router.constraints`` stay
cheap to import.
"""

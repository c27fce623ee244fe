"""The band-gap graph neural network (PyTorch Geometric): model, training, metrics, prediction, explanation.

Modules import torch lazily where they can; :mod:`.config` (the validated hyper-parameters) imports no torch,
so the AiiDA layer validates inputs without loading it.
"""

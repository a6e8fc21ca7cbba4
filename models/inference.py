"""The inference transform: a trained FHD -> a new, frozen module for evaluation.

(skeleton; being filled in by issue 10's work)
"""
import copy

import torch


def for_inference(model, device=None):
    """A new eval-mode module computing ``model``'s function with the weights as they are now.

    The result holds no reference to ``model``'s tensors: later changes to ``model`` (optimizer
    steps, BN updates, ``load_state_dict``) never reach it; run the transform again instead."""
    model = getattr(model, 'module', model)          # DDP / compiled wrappers
    model = getattr(model, '_orig_mod', model)
    frozen = copy.deepcopy(model).eval()
    if device is not None:
        frozen = frozen.to(device)
    for p in frozen.parameters():
        p.requires_grad_(False)
    return frozen

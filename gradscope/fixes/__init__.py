"""Fixes gradscope recommends that are code, not advice: pseudo-normalization of the
backpropagated gradient and re-initialisation matched to each layer's activation."""

from gradscope.fixes.init import reinit
from gradscope.fixes.pseudo_norm import PseudoNorm, insert_pseudo_norm, pseudo_norm

__all__ = ["PseudoNorm", "insert_pseudo_norm", "pseudo_norm", "reinit"]

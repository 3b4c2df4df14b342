"""The mbt2018 backbone (Minnen, Ballé & Toderici, NeurIPS 2018; Ballé et al. 2018): its analysis
and synthesis are the same four 5x5 stride-2 convolutions with GDN / IGDN as ms2020's (tfc's
``models/bmshj2018.py`` and ``models/ms2020.py`` share them), so they are ms2020's classes. What
makes the backbone mbt2018 is its widths (N = 192, M = 192 or 320; hyperprior depth N) and its
hyper transforms' widths, set in ``conf/transform/mbt2018.yaml``.
"""

from cbexp.models.transforms.ms2020 import AnalysisTransform, SynthesisTransform

__all__ = ["AnalysisTransform", "SynthesisTransform"]

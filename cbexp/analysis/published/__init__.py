"""Published numbers bundled with cbexp (data only; read by ``cbexp.analysis.reference``).

``published_kodak.json``: rate-distortion points on Kodak from the named public sources, each curve
with an ``id`` that configs use to choose the curves to overlay.
"""

"""Shared training core for the site's image models (pathology patches, mammograms).

torch is imported only by the modules of this package, never by ``site_agent.cli`` at load
time. Public pieces: :mod:`.models` (backbones), :mod:`.loop` (fit/predict), :mod:`.metrics`,
:mod:`.plots`, :mod:`.explain` (Grad-CAM), :mod:`.federated` (Flower handlers, task registry).
"""

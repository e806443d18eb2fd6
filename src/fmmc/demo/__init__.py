"""``fmmc demo``: the whole job end to end on real pretrained weights and real photos, offline, in minutes.

    fmmc demo                      # EfficientNet-Lite0 + MiniLM, ~8 classes of texture photos
    fmmc demo --quick --out /tmp/d # smaller and faster (tests)
    fmmc demo --profile paper      # DINOv2-B/14 + CLIP text, where the Hugging Face hub is reachable

or from Python::

    >>> from fmmc.demo.pipeline import DemoConfig, run_demo
    >>> result = run_demo(DemoConfig(out="fmmc-demo", quick=True))   # doctest: +SKIP
    >>> result.metrics["accuracy"]                                    # doctest: +SKIP

Pieces: :mod:`fmmc.demo.sources` (which photos, fetched how), :mod:`fmmc.demo.scenes` (composite
scenes, split by photo), :mod:`fmmc.demo.metrics` (accuracy from a confusion matrix),
:mod:`fmmc.demo.report` (report.md, plots), :mod:`fmmc.demo.pipeline` (the steps in order).
"""

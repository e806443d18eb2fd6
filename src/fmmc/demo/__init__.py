"""``fmmc demo``: the whole job end to end on real pretrained weights and real photos, offline, in minutes.

    fmmc demo                      # EfficientNet-Lite0 + MiniLM, ~8 classes of texture photos
    fmmc demo --quick --out /tmp/d # smaller and faster (tests)
    fmmc demo --profile paper      # DINOv2-B/14 + CLIP text, where the Hugging Face hub is reachable

or from Python::

    >>> from fmmc.demo.pipeline import DemoConfig, run_demo
    >>> result = run_demo(DemoConfig(out="fmmc-demo", quick=True))   # doctest: +SKIP
    >>> result.metrics["accuracy"]                                    # doctest: +SKIP

Pieces: :mod:`fmmc.demo.sources` (which photos, fetched how), :mod:`fmmc.demo.scenes` (composite
scenes, split by photo), :mod:`fmmc.demo.report` (report.md, the scene mosaic),
:mod:`fmmc.demo.pipeline` (the steps in order). Metrics and the confusion-matrix plot come from
:mod:`fmmc.evaluation`. The photo catalogue and the model presets are data files in ``fmmc/demo/data``.
"""

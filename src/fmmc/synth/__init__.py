"""The synthetic data engine (paper stage 1): triplets -> text-to-image -> grounded masks -> dataset.

    fmmc synth run configs/synth/tiny.yaml out=runs/synth-tiny generate.model_id=/path/to/tiny-sd

Stages, each resumable and shardable (``fmmc.synth.runner``)::

    triplets  fmmc.synth.triplets   curated object-material-submaterial table (+ optional LLM), filtered, balanced
    generate  fmmc.synth.generate   diffusers pipeline, one PNG per (triplet, seed)
    label     fmmc.synth.label      Grounding DINO + SAM mask of the named object (auto-labelling)
    build     fmmc.synth.build      de-duplicated, balanced, split fmmc dataset + card + contact sheets

Importing this package is cheap; torch and diffusers load only when a stage runs.
"""

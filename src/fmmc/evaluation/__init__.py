"""Evaluation and reproduction: test-set loaders, metrics, zero-shot baselines, the paper's experiment grid.

    fmmc eval runs/demo/model --data fmd:/data/fmd --out runs/eval-fmd        # one model, one test set
    fmmc eval zeroshot:clip:openai/clip-vit-base-patch32 --data fmd:/data/fmd --out runs/clip-fmd
    fmmc reproduce configs/paper.yaml --out runs/paper                         # the whole grid, resumable
    fmmc compare runs/eval-fmd runs/clip-fmd                                   # deltas between results

Modules: :mod:`~fmmc.data.readers.spec` (test sets by spec: fmd, dms, folder, jsonl readers),
:mod:`~fmmc.evaluation.metrics` (pure metrics), :mod:`~fmmc.evaluation.evaluate` (predict + write a
result folder), :mod:`~fmmc.evaluation.baselines.clip` / :mod:`~fmmc.evaluation.baselines.vlm` (baselines),
:mod:`~fmmc.evaluation.reproduce` (the grid), :mod:`~fmmc.evaluation.toydata` (an offline stand-in dataset).
Nothing heavy is imported here.
"""

"""``TrainConfig``: every setting of a training run; written as ``train_config.yaml`` next to its outputs."""

from __future__ import annotations

from dataclasses import dataclass

from fmmc.model.config import FeatureSpec


@dataclass
class TrainConfig(FeatureSpec):
    """The feature fields (backbone, image_size, pooling, min_coverage, dtype, null_mask) come from
    :class:`~fmmc.model.config.FeatureSpec`, the one description of what decides a vision feature."""

    data: str = ""  # dataset folder (metadata.jsonl)
    allow_outside_paths: bool = False  # trust data/val_data: accept paths that leave the dataset folder
    val_data: str | None = None  # separate validation set; else the `split` field, else a stratified split
    out: str = "runs/train"
    taxonomy: str = "default"
    # vision stream: the FeatureSpec fields, plus
    compile: bool = False  # torch.compile the backbone for extraction (pays off from a few hundred images)
    # language stream
    describer: str = "metadata"
    text_encoder: str = "hf:openai/clip-vit-base-patch32"
    streams: str = "both"  # both | vision | language
    # head and optimisation
    mode: str = "head"  # head: frozen backbones (paper) | full: fine-tune the vision backbone too
    recipe: str = "paper"  # paper: the fields below as given | auto: chosen by CV on the training split (recipes)
    cv_folds: int = 5  # recipe=auto: stratified folds of the training split
    cv_max_rows: int = 2000  # recipe=auto: CV on a stratified subsample of at most this many training rows
    hidden: int = 512  # MLP hidden width; 0: a linear head (one Linear on the normalised features)
    standardize: bool = False  # per-dimension mean/std of the training split's features, kept in the head
    dropout: float = 0.1
    lr: float = 5e-5  # AdamW, the paper's value
    backbone_lr: float = 1e-5  # mode=full only
    weight_decay: float = 0.01
    epochs: int = 200
    batch_size: int = 64
    patience: int = 20  # early stopping on validation loss
    val_fraction: float = 0.1
    train_fraction: float = 1.0  # data-scale ablation: stratified fraction of the training split
    class_weights: bool = False  # inverse-frequency weights in the loss (class-balanced)
    label_smoothing: float = 0.0  # cross-entropy target smoothing, 0 to 1
    calibrate: bool = True  # fit a temperature on the validation split
    seed: int = 0
    device: str = "cpu"
    extract_batch_size: int = 8
    num_workers: int | None = None  # decoding processes for feature extraction (None: the default for the device)
    cache_dir: str | None = None  # default ~/.cache/fmmc (or $FMMC_CACHE)
    progress: bool = True

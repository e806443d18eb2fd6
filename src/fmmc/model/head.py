"""[vision features ⊕ text embedding] -> MLP -> logits, as in the paper (Eq. l = argmax MLP(f_vis ⊕ f_txt)).

Each stream is layer-normalised before concatenation (max-pooled backbone features and unit-norm text
embeddings live on very different scales); ``streams`` switches the ablation: vision, language or both.
``temperature`` is fitted after training on the validation split so probabilities are calibrated.

Two options of frozen-feature practice (``fmmc.train.recipes``): ``hidden=0`` is a linear head (one
``Linear`` on the normalised features, the linear probe), and ``standardize=True`` adds per-dimension
``in_mean`` / ``in_std`` buffers (the training split's statistics, :meth:`MaterialHead.set_standardization`)
subtracted and divided before the layer norms, saved with the weights. A head without them (the paper's,
and every model saved before they existed) computes exactly what it did.
"""

from __future__ import annotations

import torch
from torch import nn

STREAMS = ("both", "vision", "language")


class MaterialHead(nn.Module):
    def __init__(self, vision_dim: int, text_dim: int, num_classes: int, hidden: int = 512,
                 dropout: float = 0.1, streams: str = "both", standardize: bool = False) -> None:
        super().__init__()
        if streams not in STREAMS:
            raise ValueError(f"streams={streams!r}: choose one of {STREAMS}")
        if hidden < 0:
            raise ValueError(f"hidden={hidden}: give the MLP's hidden width, or 0 for a linear head")
        self.streams = streams
        self.vision_dim = vision_dim if streams != "language" else 0
        self.text_dim = text_dim if streams != "vision" else 0
        if self.vision_dim + self.text_dim == 0:
            raise ValueError("the head has no input: give a vision and/or a text feature width")
        self.vis_norm = nn.LayerNorm(self.vision_dim) if self.vision_dim else None
        self.txt_norm = nn.LayerNorm(self.text_dim) if self.text_dim else None
        width = self.vision_dim + self.text_dim
        self.hidden, self.dropout = hidden, dropout
        # hidden=0: one Linear, still named mlp.0 (a head's weights keep one layout of names)
        self.mlp = nn.Sequential(nn.Linear(width, num_classes)) if hidden == 0 else nn.Sequential(
            nn.Linear(width, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        self.register_buffer("temperature", torch.ones(()))
        self.standardize = standardize
        if standardize:  # identity until set_standardization: a loaded head gets the saved values
            self.register_buffer("in_mean", torch.zeros(width))
            self.register_buffer("in_std", torch.ones(width))

    def set_standardization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store the per-dimension statistics of the training features (vision dims first, then text);
        a dimension that does not vary there (std ~ 0) is only shifted."""
        if not self.standardize:
            raise ValueError("this head was built with standardize=False: build it with standardize=True")
        std = std.to(self.in_std.dtype)
        self.in_mean.copy_(mean.to(self.in_mean.dtype))
        self.in_std.copy_(torch.where(std > 1e-6 * std.abs().max().clamp_min(1e-12), std, torch.ones_like(std)))

    def _standardized(self, x: torch.Tensor, start: int) -> torch.Tensor:
        if not self.standardize:
            return x
        stop = start + x.shape[-1]
        return (x - self.in_mean[start:stop]) / self.in_std[start:stop]

    def forward(self, vis: torch.Tensor | None, txt: torch.Tensor | None) -> torch.Tensor:
        parts = []
        if self.vis_norm is not None:
            if vis is None:
                raise ValueError("this head uses the vision stream: pass vision features")
            parts.append(self.vis_norm(self._standardized(vis, 0)))
        if self.txt_norm is not None:
            if txt is None:
                raise ValueError("this head uses the language stream: pass text embeddings")
            parts.append(self.txt_norm(self._standardized(txt, self.vision_dim)))
        return self.mlp(torch.cat(parts, dim=-1))

    def probs(self, logits: torch.Tensor, classes: list[int] | None = None) -> torch.Tensor:
        """Calibrated probabilities; ``classes`` restricts the prediction to a subset (others get 0)."""
        scaled = logits / self.temperature
        if classes is not None:
            keep = torch.full_like(scaled, float("-inf"))
            keep[..., classes] = 0
            scaled = scaled + keep
        return scaled.softmax(dim=-1)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 200) -> float:
    """Temperature scaling (Guo et al. 2017): the T minimising NLL of softmax(logits / T) on held-out data."""
    if len(labels) == 0:
        return 1.0
    log_t = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter)
    logits = logits.detach().float()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.exp())
    return min(max(t, 0.05), 20.0)

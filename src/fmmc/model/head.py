"""[vision features ⊕ text embedding] -> MLP -> logits, as in the paper (Eq. l = argmax MLP(f_vis ⊕ f_txt)).

Each stream is layer-normalised before concatenation (max-pooled backbone features and unit-norm text
embeddings live on very different scales); ``streams`` switches the ablation: vision, language or both.
``temperature`` is fitted after training on the validation split so probabilities are calibrated.
"""

from __future__ import annotations

import torch
from torch import nn

STREAMS = ("both", "vision", "language")


class MaterialHead(nn.Module):
    def __init__(self, vision_dim: int, text_dim: int, num_classes: int, hidden: int = 512,
                 dropout: float = 0.1, streams: str = "both") -> None:
        super().__init__()
        if streams not in STREAMS:
            raise ValueError(f"streams={streams!r}: choose one of {STREAMS}")
        self.streams = streams
        self.vision_dim = vision_dim if streams != "language" else 0
        self.text_dim = text_dim if streams != "vision" else 0
        if self.vision_dim + self.text_dim == 0:
            raise ValueError("the head has no input: give a vision and/or a text feature width")
        self.vis_norm = nn.LayerNorm(self.vision_dim) if self.vision_dim else None
        self.txt_norm = nn.LayerNorm(self.text_dim) if self.text_dim else None
        self.mlp = nn.Sequential(
            nn.Linear(self.vision_dim + self.text_dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        self.register_buffer("temperature", torch.ones(()))

    def forward(self, vis: torch.Tensor | None, txt: torch.Tensor | None) -> torch.Tensor:
        parts = []
        if self.vis_norm is not None:
            if vis is None:
                raise ValueError("this head uses the vision stream: pass vision features")
            parts.append(self.vis_norm(vis))
        if self.txt_norm is not None:
            if txt is None:
                raise ValueError("this head uses the language stream: pass text embeddings")
            parts.append(self.txt_norm(txt))
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

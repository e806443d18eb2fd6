"""Vision stream: frozen backbones (by spec), image/mask preprocessing, mask pooling, feature extraction."""

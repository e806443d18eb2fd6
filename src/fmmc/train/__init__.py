"""Training the head (frozen backbones, the paper's protocol) or the whole vision stream (``mode=full``)."""

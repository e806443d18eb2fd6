"""Dataset format (``metadata.jsonl`` regions, HF imagefolder-compatible), safe image/mask IO, validation."""

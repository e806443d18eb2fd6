"""Zero-shot baselines (CLIP/SigLIP text prompts, a VLM asked to answer), named by spec like every model."""

"""The language stream: a describer (VLM) writes one sentence about a region's material appearance,
a text encoder (CLIP text, 512-d) embeds it.

    >>> from fmmc.core.registry import build
    >>> describer = build("describer", "openai:gpt-4o-mini")                     # doctest: +SKIP
    >>> encoder = build("text-encoder", "hf:openai/clip-vit-base-patch32")      # doctest: +SKIP
    >>> texts, failures = describe_regions(regions, describer, DescriptionCache("desc.sqlite"))  # doctest: +SKIP
    >>> encoder.encode(texts).shape                                              # doctest: +SKIP
    torch.Size([N, 512])

Modules: ``describers`` (protocol, ``none``/``metadata``, :func:`describe_regions`), ``cache`` (SQLite
description cache), ``marking`` (how a region is shown to a VLM, the default prompts),
``openai_client`` (a generic OpenAI-compatible chat client), ``openai_describer``, ``hf_describer``
(a local transformers VLM) and ``text_encoders``. Nothing heavy is imported here.
"""

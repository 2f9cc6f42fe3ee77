"""Pre-trained networks a run resolves by name (timm, ``hf-hub:``, ``local-dir:``, ``transformers:``) or trains
once and caches: today the CMI proxies."""

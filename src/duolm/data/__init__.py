"""Data: tokenizers, corpora, block building and caching, and the resumable sampler."""

"""One encoder per modality: each maps its part of the batch to (B, L, D) embeddings and a (B, L) mask."""

"""Feature extractors shared by methods (timm models with each spec's preprocessing and position embeddings)."""

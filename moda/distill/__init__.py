"""Data-free distillation: a VLM describes each catalogue image (Prompt I), an LLM refines it (Prompt II).

    python -m moda.distill --catalog data/fashion/fashion.csv --out data/distilled
"""

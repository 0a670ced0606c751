"""PERU Studio engine: merging, sparse and low-rank reuse of fine-tuned models.

Paper: "Effective and Parameter-Efficient Reusing Fine-Tuned Models" (PERU / BYOM),
https://arxiv.org/abs/2310.01886 . This package never imports streamlit.
"""
import os

# No hub access at run time, ever (open_clip / huggingface_hub honour these).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

__version__ = "0.1.0"

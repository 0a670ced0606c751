"""PERU Studio engine: merging, sparse and low-rank reuse of fine-tuned models.

Paper: "Effective and Parameter-Efficient Reusing Fine-Tuned Models" (PERU / BYOM),
https://arxiv.org/abs/2310.01886 . This package never imports streamlit.
"""
# The hub is contacted only by peru_core.hub, for hf:// references the user wrote, and never when HF_HUB_OFFLINE is
# set; models are built with pretrained=None, so open_clip never downloads.

__version__ = "0.1.0"

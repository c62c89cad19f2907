"""oirl: an offline prompt recommender (Prompt-OIRL, Sun et al., ICLR 2024).

Data flows one way: logs -> embeddings -> features -> reward model -> selector.
Importing ``oirl`` is cheap; torch, sentence-transformers, LightGBM and XGBoost load
only when first needed.
"""

__version__ = "0.1.0"

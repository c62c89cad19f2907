"""Importers turn published logs into the canonical log schema (see :mod:`oirl.data.logs`)."""

from oirl.data.importers.prompt_oirl import DATASETS, HELDOUT_PROMPTS, PROMPTS, TRAINING_PROMPTS, import_prompt_oirl

__all__ = ["DATASETS", "HELDOUT_PROMPTS", "PROMPTS", "TRAINING_PROMPTS", "import_prompt_oirl"]

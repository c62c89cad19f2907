"""Benchmark reproductions: ``oirl reproduce`` (Prompt-OIRL tables)."""

"""Refinement plugins: each a model, its energy, its step and its evaluation."""

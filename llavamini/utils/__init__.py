"""Small helpers shared by training and evaluation (no model code)."""

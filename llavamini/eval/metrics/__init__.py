"""Answer normalisation and matching rules shared by the task scorers (no model imports)."""

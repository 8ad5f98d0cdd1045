"""Integrations of LLaVA-Mini with other engines (each imports its engine lazily)."""

"""Model definitions (plain torch modules)."""

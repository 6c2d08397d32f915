"""Small shared helpers (logging, errors)."""

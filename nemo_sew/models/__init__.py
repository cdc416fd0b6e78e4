"""NeMo model classes."""

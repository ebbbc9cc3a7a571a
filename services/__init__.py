"""The five Flywheel services; each is independent and imports only ``shared``."""

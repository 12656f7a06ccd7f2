"""One module per task family; each registers its tasks with ``worker.registry.task``."""

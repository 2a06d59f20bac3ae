"""The preloader: warms models into multi-model endpoints. Depends on ``tenancy`` and ``router``."""

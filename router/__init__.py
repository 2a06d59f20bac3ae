"""The router: the data plane product backends call per request. Depends on ``tenancy``."""

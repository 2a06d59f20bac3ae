"""Clients for the multi-model endpoints, behind one small interface the preloader reuses."""

from router.backends.base import Backend, UpstreamRequest, UpstreamResponse

__all__ = ["Backend", "UpstreamRequest", "UpstreamResponse"]

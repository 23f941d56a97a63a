"""The operator side: the admin HTTP server (metrics, health, API, dashboard) and its metrics."""

from crawlguard.admin.server import AdminServer

__all__ = ["AdminServer"]

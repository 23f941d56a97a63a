"""Helpers for crawlers that run through crawlguard (imported only by those crawlers)."""

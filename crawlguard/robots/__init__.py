"""robots.txt fetching, caching (per process and shared), and the parser pool.

The rules themselves (parser and matcher) are pure: crawlguard.policy.robots.
"""

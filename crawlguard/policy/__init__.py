"""The policy: pure rules over one request (no I/O, no mitmproxy, no prometheus).

`pipeline.py` is the order of checks; every other module here is one concern of it.
"""

"""Web Bot Auth core (issue 23): per-tenant Ed25519 keys, RFC 9421 request signing and the
key directory, as pure, separately tested pieces. Not wired into the proxy, config or CLI yet."""

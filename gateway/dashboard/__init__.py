"""The tenant admins' web pages: server-rendered from RPCs, signed in with a cookie session."""

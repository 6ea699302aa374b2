"""The HTTP gateway: public JSON/HTTP routes built from the protos' google.api.http annotations."""

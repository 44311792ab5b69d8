"""A lean keep-alive HTTP/1.1 client for the upstreams, with its own error classes."""

"""The decision: what a request is, who sent it, and whether the route lets it through.

Pure of servers and clients: the proxy, the middleware and forward-auth are adapters over it.
"""

"""The standalone proxy: forwarding to upstreams, websockets, and the upstream client."""

"""Serving on uvicorn: the server and its workers, protocol limits, reload, logging."""

"""The HTTP door: the FastAPI app, its routes, middlewares (auth, body limit, timing log) and the mapping of the
domain exceptions (service/a1111/errors.py) to HTTP status codes and A1111's error body."""

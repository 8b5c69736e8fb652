"""nanollm.serve: one model behind the OpenAI HTTP API, so real clients (the openai package, chat UIs) use it.

Reading order:
  api.py        a request body -> a checked Request (the engine's own settings); APIError, OpenAI's error shape
  responses.py  tokens -> OpenAI's response objects, whole or as stream chunks
  metrics.py    what GET /metrics reports (Prometheus text)
  scheduler.py  the one thread that owns the model: a bounded queue, iteration-level scheduling over engine Batches
  server.py     the standard library's HTTP server: routes, keys, server-sent events, disconnects, shutdown
  __main__.py   python -m nanollm.serve --model DIR_OR_HUB_NAME [--host] [--port] [--api-key]
"""
from .server import Server

__all__ = ["Server"]

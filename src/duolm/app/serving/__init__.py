"""`duolm serve`: an OpenAI-compatible HTTP server over any duolm model (issue 36, in progress).

- duolm.app.serving.engine: the batching engine (a bounded queue, one worker, batches of requests
  with the same sampler settings, each row holding its own prompt);
- duolm.app.serving.protocol: OpenAI's request bodies -> checked settings, sampled ids -> responses;
- duolm.app.serving.server: the ASGI app (FastAPI): routes, streaming, errors, Prometheus metrics.
"""

"""The model server of chapter 01: a Triton-compatible repository, router, batcher and protocols.

    tinyinfer serve repo --http-port 8000 --grpc-port 8001 --metrics-port 8002

Modules, from the disk to the wire:

- :mod:`~tinyinfer.serve.repository`  Triton's repository layout and ``config.pbtxt``; load, unload, poll
- :mod:`~tinyinfer.serve.routing`     version policies; the stable/canary router and its rollback
- :mod:`~tinyinfer.serve.batcher`     the dynamic batcher and the model instances that run its batches
- :mod:`~tinyinfer.serve.core`        what each request means, whichever protocol carried it
- :mod:`~tinyinfer.serve.http`        the Open Inference Protocol v2 over HTTP (Starlette on uvicorn)
- :mod:`~tinyinfer.serve.grpc_server` the same over gRPC, with Triton's own service definitions
- :mod:`~tinyinfer.serve.metrics`     Prometheus metrics
- :mod:`~tinyinfer.serve.server`      one process running all of the above; graceful stop
- :mod:`~tinyinfer.serve.perf`        the load generator
- :mod:`~tinyinfer.serve.cluster`     replicas behind nginx

The package imports nothing at import time, so ``routing`` and ``perf`` work without the
server's dependencies (the ``serve`` extra).
"""

"""The money app's HTTP API: cardholders sign in, see their accounts and cards, talk and pay each other.

    processor api --http 127.0.0.1:8080                      # serve (processor.api.server.run_api)
    async with running_api(settings) as api: ...              # in process, on a free port (tests, load)
    create_app(service)                                       # the FastAPI application over an open ApiService

The package keeps its imports light here: the migrations import `processor.api.models` without FastAPI.
"""

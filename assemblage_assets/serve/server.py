"""Start the app under uvicorn: settings from the environment, the bind rule, the provider."""

from __future__ import annotations

import threading
from typing import Any

from assemblage_assets.serve import security
from assemblage_assets.serve.app import create_app
from assemblage_assets.serve.config import ServeConfig
from assemblage_assets.serve.service import SearchService

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def build(dsn: str, provider: Any = None, config: ServeConfig | None = None) -> Any:
    """The app on the catalogue at ``dsn``; ``provider``: the configured embedding provider."""
    config = config or ServeConfig.from_env()
    return create_app(SearchService(dsn, provider, ef_search=config.ef_search), config)


def run(dsn: str, provider: Any, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    import uvicorn

    config = ServeConfig.from_env()
    security.require_token_off_loopback(host, config.token)
    app = build(dsn, provider, config)
    # the text model loads beside the server starting (the first search waits for it, if need be)
    threading.Thread(target=lambda: print(f"assemblage serve: {app.state.service.warm()}", flush=True),
                     name="assemblage-warm", daemon=True).start()
    shown = f"[{host}]" if ":" in host else host
    print(f"assemblage serve: http://{shown}:{port}/  (API /api, schema /openapi.json"
          f"{', token required' if config.token else ''})", flush=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level="info", access_log=False, server_header=False)
    finally:
        app.state.service.close()

"""Helpers for the embedding tests: a tiny CLIP built here, a small ingested image tree, and
local HTTP fakes of the Replicate and OpenAI APIs on 127.0.0.1 (scriptable per request)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from assemblage_assets.core import db
from assemblage_assets.core.imaging import DerivativeSpec
from assemblage_assets.dev.tiny_clip import build_clip_checkpoint
from assemblage_assets.images.derive import derive_shard
from assemblage_assets.images.scan import scan_shard
from assemblage_assets.images.shards import discover_shards
from resources.database import PostgresResource
from resources.embedding import LocalClipEmbedding
from resources.image_library import ImageLibraryResource

_TINY_LOCK = threading.Lock()
_TINY_CACHE: dict[str, Path] = {}

COLOURS = {
    "orange": (255, 140, 0),
    "blue": (20, 60, 230),
    "green": (30, 200, 60),
    "white": (245, 245, 245),
}


def tiny_clip(base: Path) -> Path:
    """A tiny random CLIP (built once per session under ``base``), named ``tiny-clip``."""
    with _TINY_LOCK:
        if "tiny" not in _TINY_CACHE:
            _TINY_CACHE["tiny"] = build_clip_checkpoint(base / "tiny-clip", "tiny", seed=0)
        return _TINY_CACHE["tiny"]


def photo(colour: tuple[int, int, int], size: tuple[int, int] = (320, 240), seed: int = 0) -> Image.Image:
    """A flat colour with a few blocks: distinct images of the same colour stay distinct."""
    rng = np.random.default_rng(seed)
    arr = np.empty((size[1], size[0], 3), np.uint8)
    arr[:] = colour
    for _ in range(4):
        y, x = rng.integers(0, size[1] - 40), rng.integers(0, size[0] - 40)
        arr[y : y + 40, x : x + 40] = rng.integers(0, 255, 3)
    return Image.fromarray(arr, "RGB")


def stable_seed(folder: str, index: int) -> int:
    """The same in every process (``hash()`` is randomised per process) and distinct per file."""
    return int.from_bytes(hashlib.sha256(f"{folder}\0{index}".encode()).digest()[:8], "big")


def write_tree(root: Path, shards: dict[str, list[str]]) -> Path:
    """``{shard folder: [colour names]}`` -> JPEG files ``<folder>/<colour>-<i>.jpg``."""
    for folder, colours in shards.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i, colour in enumerate(colours):
            photo(COLOURS[colour], seed=stable_seed(folder, i)).save(root / folder / f"{colour}-{i}.jpg", quality=90)
    return root


def ingest(dsn: str, images: Path, cache: Path) -> list[str]:
    """raw_files + derivatives for every shard (status 'processed'); returns the shard keys."""
    keys = []
    with db.connect(dsn) as conn:
        for shard in sorted(discover_shards(images), key=lambda s: s.key):
            scan_shard(conn, shard, max_pixels=120_000_000)
            derive_shard(conn, shard.key, cache_dir=cache, spec=DerivativeSpec(), workers=1)
            keys.append(shard.key)
    return keys


def shard_resources(dsn: str, images: Path, cache: Path, tiny: Path) -> dict[str, Any]:
    """The resources of the embeddings asset on the test database, tree, cache and tiny CLIP."""
    return {
        "database": PostgresResource(dsn=dsn),
        "library": ImageLibraryResource(images_dir=str(images), derivative_cache_dir=str(cache)),
        "embedding": LocalClipEmbedding(clip_model=str(tiny)),
    }


def image_ids(dsn: str, shard: str | None = None) -> dict[str, str]:
    """file name -> image id of processed paths."""
    with db.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT local_path, image_id::text AS id FROM processing_log WHERE image_id IS NOT NULL "
            "AND (%(s)s::text IS NULL OR shard = %(s)s)",
            {"s": shard},
        ).fetchall()
    return {Path(r["local_path"]).name: r["id"] for r in rows}


def query(dsn: str, sql: str, *params: Any) -> list[dict[str, Any]]:
    with db.connect(dsn) as conn:
        return conn.execute(sql, params or None).fetchall()


def fake_vector(seed: str, dim: int) -> list[float]:
    """Test data for the fake APIs: a fixed pseudo-random vector per input."""
    rng = np.random.default_rng(int(hashlib.sha256(seed.encode()).hexdigest()[:8], 16))
    return [round(float(x), 6) for x in rng.standard_normal(dim)]


# --------------------------------------------------------------------------- HTTP fakes


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body or b"null")


class FakeAPI:
    """A threaded HTTP server on 127.0.0.1. ``routes[(method, path_prefix)]`` answers a request;
    ``script`` (a list) overrides the next answers of a route, one per request."""

    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self.routes: dict[tuple[str, str], Callable[[Seen], Reply]] = {}
        self.scripts: dict[tuple[str, str], list[Reply | Callable[[Seen], Reply]]] = {}
        self._lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, self.rfile.read(length), time.monotonic())
                reply = api.dispatch(seen)
                if reply.delay:
                    time.sleep(reply.delay)
                payload = b"" if reply.body is None else json.dumps(reply.body).encode() if not isinstance(reply.body, bytes) else reply.body
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def dispatch(self, seen: Seen) -> Reply:
        with self._lock:
            self.requests.append(seen)
            for (method, prefix), script in self.scripts.items():
                if seen.method == method and seen.path.startswith(prefix) and script:
                    step = script.pop(0)
                    return step(seen) if callable(step) else step
            routes = sorted(self.routes.items(), key=lambda kv: -len(kv[0][1]))
        for (method, prefix), handler in routes:
            if seen.method == method and seen.path.startswith(prefix):
                return handler(seen)
        return Reply(404, {"detail": f"no route {seen.method} {seen.path}"})

    def script(self, method: str, prefix: str, *replies: Reply | Callable[[Seen], Reply]) -> None:
        with self._lock:
            self.scripts.setdefault((method, prefix), []).extend(replies)

    def calls(self, method: str, prefix: str) -> list[Seen]:
        with self._lock:
            return [r for r in self.requests if r.method == method and r.path.startswith(prefix)]

    def __enter__(self) -> FakeAPI:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def prediction(output: Any, *, status: str = "succeeded", predict_time: float | None = 0.5, error: str | None = None) -> dict:
    pid = uuid.uuid4().hex[:12]
    return {
        "id": pid, "model": "krthr/clip-embeddings", "version": "1c03", "status": status, "input": {},
        "output": output, "logs": "", "error": error,
        "metrics": {"predict_time": predict_time} if predict_time is not None else {},
        "created_at": "2024-01-01T00:00:00Z", "started_at": None, "completed_at": None,
        "urls": {"get": f"/v1/predictions/{pid}", "cancel": f"/v1/predictions/{pid}/cancel"},
    }


class FakeReplicate(FakeAPI):
    """POST /v1/files (uploads); POST /v1/predictions creates a prediction (kept: GET by id, and
    the newest-first list GET /v1/predictions). With ``complete_after`` > 0 a prediction stays
    ``processing`` that many seconds after its creation, as a real model run would; else it
    has succeeded at once. ``created`` counts the predictions Replicate would bill."""

    def __init__(self, dim: int = 768, shape: str = "dict", complete_after: float = 0.0) -> None:
        super().__init__()
        self.dim = dim
        self.shape = shape
        self.complete_after = complete_after
        self.uploads: dict[str, bytes] = {}
        self.predictions: dict[str, tuple[float, dict]] = {}  # id -> (monotonic creation time, body)
        self.routes[("POST", "/v1/files")] = self._file
        self.routes[("POST", "/v1/predictions")] = self._predict
        self.routes[("POST", "/v1/predictions/")] = lambda s: Reply(200, prediction(None, status="canceled"))
        self.routes[("GET", "/v1/predictions/")] = self._get
        self.routes[("GET", "/v1/predictions")] = self._list

    @property
    def created(self) -> int:
        with self._lock:
            return len(self.predictions)

    def create(self, seen: Seen) -> dict:
        """Store a new prediction for the request (billed from here on) and return its body."""
        body = prediction(self.output_for(seen))
        body["input"] = seen.json()["input"]
        body["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
        with self._lock:
            self.predictions[body["id"]] = (time.monotonic(), body)
        return self._view(body["id"])

    def _view(self, pid: str) -> dict:
        with self._lock:
            born, body = self.predictions[pid]
        if time.monotonic() - born >= self.complete_after:
            return body
        return {**body, "status": "processing", "output": None, "metrics": {}}

    def _get(self, seen: Seen) -> Reply:
        pid = seen.path.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
        if pid not in self.predictions:
            return Reply(404, {"detail": "Not found."})
        return Reply(200, self._view(pid))

    def _list(self, seen: Seen) -> Reply:
        with self._lock:
            newest = sorted(self.predictions, key=lambda p: -self.predictions[p][0])[:100]
        return Reply(200, {"next": None, "previous": None, "results": [self._view(p) for p in newest]})

    def _file(self, seen: Seen) -> Reply:
        fid = uuid.uuid4().hex[:10]
        self.uploads[fid] = seen.body
        return Reply(201, {
            "id": fid, "name": "upload", "content_type": "image/jpeg", "size": len(seen.body), "etag": fid,
            "checksums": {}, "metadata": {}, "created_at": "2024-01-01T00:00:00Z", "expires_at": None,
            "urls": {"get": f"https://files.invalid/{fid}"},
        })

    def output_for(self, seen: Seen) -> Any:
        payload = seen.json()["input"]
        key = payload.get("image") or payload.get("text") or json.dumps(payload)
        vector = fake_vector(str(key), self.dim)
        return {"embedding": vector} if self.shape == "dict" else [{"embedding": vector}]

    def _predict(self, seen: Seen) -> Reply:
        return Reply(201, self.create(seen))


class FakeOpenAI(FakeAPI):
    """POST /v1/chat/completions (caption JSON) and POST /v1/embeddings."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.dim = dim
        self.routes[("POST", "/v1/chat/completions")] = self._chat
        self.routes[("POST", "/v1/embeddings")] = self._embed

    def _chat(self, seen: Seen) -> Reply:
        content = json.dumps({"caption": "An orange car parked on a street.", "tags": ["Car", "the street", "orange", "car"]})
        return Reply(200, {
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": seen.json()["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 850, "completion_tokens": 40, "total_tokens": 890},
        })

    def _embed(self, seen: Seen) -> Reply:
        body = seen.json()
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        dim = body.get("dimensions") or self.dim
        return Reply(200, {
            "object": "list", "model": body["model"],
            "data": [{"object": "embedding", "index": i, "embedding": fake_vector(t, dim)} for i, t in enumerate(texts)],
            "usage": {"prompt_tokens": 12 * len(texts), "total_tokens": 12 * len(texts)},
        })


@contextmanager
def serving(api: FakeAPI) -> Iterator[FakeAPI]:
    with api:
        yield api

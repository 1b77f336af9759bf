"""What the chaos trials share: a child process running one paid embedding run of a shard (so a
test can SIGKILL it mid-call), a bounded kill loop, and fault injection for the loopback
Replicate stand-in."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.embed_support import FakeReplicate, Reply, Seen, image_ids, ingest, query, write_tree

# The child: one embeddings or captions run of a shard with a paid provider pointed at the
# stand-in; prints its report's counts as JSON when it finishes (it often does not: it is killed).
STAGE_CHILD = """
import json, sys
from pathlib import Path
from assemblage_assets.core import db

stage, dsn, shard, cache, kind, options, run_id = sys.argv[1:8]
if stage == "embed":
    from assemblage_assets.embeddings.embed import embed_shard as run_stage
    from resources.embedding import OpenAIEmbedding as OpenAI, ReplicateEmbedding as Replicate
else:
    from assemblage_assets.embeddings.captions import caption_shard as run_stage
    from resources.caption import OpenAICaptions as OpenAI, ReplicateCaptions as Replicate
provider = {"replicate": Replicate, "openai": OpenAI}[kind](**json.loads(options))
with db.connect(dsn) as conn:
    report = run_stage(conn, shard, provider, dsn=dsn, cache_dir=Path(cache), run_id=run_id)
print(json.dumps({"counts": dict(report.counts), "paid_calls": report.paid_calls}))
"""


def start_stage(stage: str, dsn: str, shard: str, cache: str | Path, kind: str, options: dict[str, Any], run_id: str,
                env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """A child process running ``stage`` (embed | caption) over ``shard``."""
    return subprocess.Popen(
        [sys.executable, "-c", STAGE_CHILD, stage, dsn, shard, str(cache), kind, json.dumps(options), run_id],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "REPLICATE_POLL_INTERVAL": "0.05", **(env or {})},
    )


def start_embed(dsn: str, shard: str, cache: str, kind: str, options: dict[str, Any], run_id: str,
                env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return start_stage("embed", dsn, shard, cache, kind, options, run_id, env)


def trial_shard(dsn: str, root: Path, images: int) -> tuple[str, Path]:
    """A shard ``trial`` of ``images`` generated photos, ingested and derived: (key, cache)."""
    colours = ("orange", "blue", "green", "white")
    tree = write_tree(root / "images", {"trial": [colours[i % 4] for i in range(images)]})
    cache = root / "cache"
    ingest(dsn, tree, cache)
    assert len(image_ids(dsn, "trial")) == images
    return "trial", cache


def finish(proc: subprocess.Popen[str], timeout: float = 180) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"stage run failed ({proc.returncode}):\n{err[-3000:]}"
    return json.loads(out.strip().splitlines()[-1])


@dataclass
class KillLog:
    kills: int = 0
    at_counts: list[int] = field(default_factory=list)  # the stand-in's count when each kill landed
    finished: list[dict[str, Any]] = field(default_factory=list)  # the report of a round that ended before its kill

    def resumed(self, *reports: dict[str, Any]) -> int:
        """Paid calls resumed by the completed runs: a round that finished first, then ``reports``
        (the final run resumes nothing when such a round already did)."""
        return sum(r["counts"].get("paid_calls_resumed", 0) for r in [*self.finished, *reports])


def settled_by_another_run(dsn: str, request: str) -> int:
    """Paid calls of ``request`` one run journaled and another settled (its cost row carries the
    settling run): what the database proves was resumed, by any later run, killed ones included.
    The reports cannot say it: a run killed after settling what it resumed leaves no report."""
    return query(dsn, """SELECT count(*) AS n FROM paid_call_intents i
                         JOIN embedding_usage_log u ON u.provider = i.provider AND u.model = i.model
                              AND u.image_id = i.image_id AND u.ok
                         WHERE i.request = %s AND i.state = 'settled' AND u.run_id <> i.run_id""", request)[0]["n"]


def kill_when(proc: subprocess.Popen[str], reached: Callable[[], bool], *, timeout: float = 60.0) -> bool:
    """SIGKILL ``proc`` as soon as ``reached()`` holds (polled every 5 ms, at most ``timeout``
    seconds); False if the run ended first, the kill included: it may exit between ``poll`` and
    the signal (a zombie takes it silently), and then it finished, it was not killed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if reached():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            return proc.returncode == -signal.SIGKILL
        time.sleep(0.005)
    raise AssertionError(f"the condition was not reached within {timeout:g}s")


def kill_rounds(start: Callable[[int], subprocess.Popen[str]], progress: Callable[[], int], *,
                rounds: int, step: tuple[int, int], seed: int = 0, total: int | None = None) -> KillLog:
    """Start a run, kill it once ``progress()`` grew by a random step, ``rounds`` times; each
    round bounded in time. ``total``: the most ``progress()`` can reach (Replicate: one create
    per image); a step is capped there, so a kill landing late (a loaded machine) does not push
    the next target out of reach, and the rounds end once nothing is left to kill. Returns what
    was killed when."""
    rng = random.Random(seed)
    log = KillLog()
    for i in range(rounds):
        target = progress() + rng.randint(*step)
        if total is not None:
            if progress() >= total:
                break  # every call was made: a further kill would not land mid-way
            target = min(target, total)
        proc = start(i)
        if not kill_when(proc, lambda target=target: progress() >= target):
            log.finished.append(finish(proc))  # the run finished first: nothing left to kill
            break
        log.kills += 1
        log.at_counts.append(progress())
    return log


class FaultyReplicate(FakeReplicate):
    """The stand-in with transient faults injected at given rates on every request: HTTP 500,
    HTTP 429 (``Retry-After: 0``), a connection closed mid-reply, and malformed JSON. A 500, a
    429 or a reset never creates a prediction; a malformed reply to a create does (the worst
    case: Replicate accepted it and the answer was garbled on the way)."""

    def __init__(self, *, p500: float, p429: float, pmalformed: float, seed: int = 0, **kw: Any) -> None:
        super().__init__(**kw)
        self.rng = random.Random(seed)
        self.p500, self.p429, self.pmalformed = p500, p429, pmalformed
        self.injected: dict[str, int] = {"500": 0, "429": 0, "malformed": 0}
        for route in list(self.routes):
            self.routes[route] = self._faulty(self.routes[route])

    def _faulty(self, handler: Callable[[Seen], Reply]) -> Callable[[Seen], Reply]:
        def answer(seen: Seen) -> Reply:
            with self._lock:
                roll = self.rng.random()
            if roll < self.p500:
                self.injected["500"] += 1
                return Reply(500, {"detail": "injected server error"})
            if roll < self.p500 + self.p429:
                self.injected["429"] += 1
                return Reply(429, {"detail": "injected rate limit"}, headers={"Retry-After": "0"})
            reply = handler(seen)
            if roll < self.p500 + self.p429 + self.pmalformed:
                self.injected["malformed"] += 1
                return Reply(reply.status, b'{"id": "truncat')  # the handler ran: a create was made
            return reply

        return answer

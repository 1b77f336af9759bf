"""What the uploads sensor requests each tick, without Dagster: the shards of ``UPLOADS_SOURCE``
with new entries, found the cheapest way the source allows.

- Dropbox: a recursive ``files/list_folder`` cursor kept in the sensor cursor; a tick asks only
  for the changes since (``files/list_folder/continue``). The first tick takes the latest
  cursor *before* listing the folder once, so an upload landing during that listing comes with
  the next changes; a cursor Dropbox resets falls back to one full listing the same way.
- An S3 bucket with ``UPLOADS_QUEUE_URL``: the bucket's event notifications in SQS. A tick
  receives a bounded batch and maps each created key to its shard. A message is deleted only
  by the *next* tick: Dagster commits a tick's cursor (holding the receipt handles) only once
  its run requests are submitted, so a crash before that leaves the messages in the queue,
  where they come back after the visibility timeout and are requested again (raw_files skips
  what it already has). A full listing still runs once at the start and every
  ``UPLOADS_RECONCILE_SECONDS`` (default a day) to catch a notification that never came.
- An R2 bucket with a ``cfqueue://`` ``UPLOADS_QUEUE_URL``: the same, from the Cloudflare Queue
  R2 delivers its event notifications to, over HTTP pull (``resources/cloudflare_queue.py``):
  messages are leased for the visibility timeout and acknowledged by the next tick.
- Otherwise (Supabase, S3 or R2 without a queue): full listings, one after the other, as before.

Every full listing walks the shards in name order within a time budget per tick and resumes
from the next shard name (``listing_step``): a 5M-object bucket does not fit in one 60 s tick.
A shard's run key is (shard, newest entry time, fingerprint of the entries behind the request),
so the same uploads requested twice are launched once and a new upload gets a new run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from assemblage_assets.images.sources import ShardRef, shard_of_entry, shard_refs
from resources.cloudflare_queue import CloudflareQueue
from resources.image_source import CursorResetError, DropboxSource, ImageSource, S3Source, SourceError
from resources.upload_queue import MalformedEventError, NotificationQueue, UploadQueue

MAX_RUNS_PER_TICK = 100
OVERLAP_SECONDS = 300.0  # a listing pass looks back this far: an upload can land in a shard already listed
DROPBOX_MAX_PAGES = 20  # change pages per tick; the rest comes next tick from the kept cursor
RECENT_PROBLEMS = 5
DEFAULT_RECONCILE_SECONDS = 86400
DEFAULT_LISTING_BUDGET_SECONDS = 30.0  # of listing per tick: sensor ticks time out at 60 s


def _digest(uri: str, marker: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{uri}\0{marker}".encode(), digest_size=8).digest())


@dataclass
class ShardUploads:
    """One shard's new entries this tick: their newest time and an order-independent digest of
    (uri, marker) pairs (S3 times have 1 s resolution: two uploads in one second still differ)."""

    ref: ShardRef
    newest: float = 0.0
    count: int = 0
    total: int = 0

    def add(self, uri: str, marker: str, modified: float | None = None) -> None:
        self.newest = max(self.newest, modified or 0.0)
        self.count += 1
        self.total = (self.total + _digest(uri, marker)) % 2**64

    def merge(self, other: ShardUploads) -> None:
        self.newest = max(self.newest, other.newest)
        self.count += other.count
        self.total = (self.total + other.total) % 2**64

    @property
    def fingerprint(self) -> str:
        return f"{self.count}-{self.total:016x}"

    @property
    def run_key(self) -> str:
        return f"uploads:{self.ref.key}:{self.newest:.3f}:{self.fingerprint}"


class ShardBatch:
    """The shards of one tick; an entry delivered twice (SQS may) counts once."""

    def __init__(self, sources: list[ImageSource], source: ImageSource) -> None:
        self._sources, self._source = sources, source
        self._by_key: dict[str, ShardUploads] = {}
        self._seen: set[tuple[str, str]] = set()

    def add(self, uri: str, marker: str, modified: float | None) -> None:
        if (uri, marker) in self._seen:
            return
        self._seen.add((uri, marker))
        ref = shard_of_entry(self._sources, self._source, uri)
        self._by_key.setdefault(ref.key, ShardUploads(ref)).add(uri, marker, modified)

    def merge(self, shards: Iterable[ShardUploads]) -> None:
        for shard in shards:
            if shard.ref.key in self._by_key:
                self._by_key[shard.ref.key].merge(shard)
            else:
                self._by_key[shard.ref.key] = shard

    def __len__(self) -> int:
        return len(self._by_key)

    @property
    def newest(self) -> float:
        return max((s.newest for s in self._by_key.values()), default=0.0)

    def shards(self) -> list[ShardUploads]:
        return sorted(self._by_key.values(), key=lambda s: s.newest)


@dataclass
class UploadsCursor:
    """The sensor's JSON cursor (today's ``{"since": ...}`` still reads)."""

    since: float = 0.0  # a listing pass requests shards with entries newer than this minus the overlap
    pass_started: float = 0.0  # a listing pass in progress since then (0: none)
    pass_after: str | None = None  # the last shard name it has done (it goes in name order)
    pass_newest: float = 0.0  # the newest entry time it has seen
    dropbox: str = ""  # recursive list_folder cursor of the whole folder
    acks: list[str] = field(default_factory=list)  # receipt handles behind the last tick's requests
    reconciled_at: float = 0.0  # queue: when the last full reconciliation pass finished
    problems: int = 0  # malformed messages or records seen so far
    recent_problems: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, raw: str | None) -> UploadsCursor:
        try:
            doc = json.loads(raw or "{}")
        except ValueError:
            doc = {}
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in names}) if isinstance(doc, dict) else cls()

    def dump(self) -> str:
        defaults = UploadsCursor()
        return json.dumps({k: v for k, v in dataclasses.asdict(self).items() if v != getattr(defaults, k) or k == "since"})

    @property
    def listing(self) -> bool:
        """Whether a listing pass is in progress."""
        return self.pass_started > 0

    def note_problems(self, problems: list[str]) -> None:
        self.problems += len(problems)
        self.recent_problems = ([p[:200] for p in problems] + self.recent_problems)[:RECENT_PROBLEMS]


@dataclass
class TickPlan:
    """What one tick found: the shards to request runs for, the cursor to keep, warnings."""

    mode: str  # "listing", "queue" or "dropbox"
    shards: list[ShardUploads]
    cursor: UploadsCursor
    notes: list[str] = field(default_factory=list)
    listed: bool = False  # whether part of a full listing pass ran this tick
    messages: int = 0  # queue messages received

    @property
    def how(self) -> str:
        """How the tick looked, for the tick log: e.g. ``3 queue message(s), no full listing``."""
        listing = "no full listing"
        if self.listed:
            listing = "full listing, to be continued" if self.cursor.listing else "full listing"
        if self.mode == "listing":
            return listing
        what = f"{self.messages} queue message(s)" if self.mode == "queue" else "Dropbox changes"
        return f"{what}, {listing}"


def listing_step(sources: list[ImageSource], source: ImageSource, cursor: UploadsCursor, *, now: float,
                 budget_seconds: float, limit: int = MAX_RUNS_PER_TICK) -> list[ShardUploads]:
    """Advance the cursor's full listing pass (starting one if none is in progress): shards in
    name order, each streamed, until ``limit`` of them have entries newer than ``since`` minus
    the overlap or ``budget_seconds`` have passed (a 5M-object bucket takes many ticks; a shard
    is never cut short). Updates ``cursor``; when the pass completes, ``since`` moves to the
    newest entry it saw, at most the pass's start (an upload into a shard done earlier in the
    pass is newer than that, so the next pass finds it)."""
    if not cursor.listing:
        cursor.pass_started, cursor.pass_after, cursor.pass_newest = now, None, 0.0
    window = max(0.0, cursor.since - OVERLAP_SECONDS)
    refs = sorted((r for r in shard_refs(sources) if r.source is source and r.remote is not None),
                  key=lambda r: r.remote.name if r.remote else "")
    todo = [r for r in refs if cursor.pass_after is None or (r.remote and r.remote.name > cursor.pass_after)]
    deadline = time.monotonic() + budget_seconds
    found: list[ShardUploads] = []
    for i, ref in enumerate(todo):
        assert ref.remote is not None
        shard, newest = ShardUploads(ref), 0.0
        for e in source.entries(ref.remote):
            newest = max(newest, e.modified or 0.0)
            if (e.modified or 0.0) > window:
                shard.add(e.uri, e.marker)  # only the window's entries: a handful, not the shard
        cursor.pass_after, cursor.pass_newest = ref.remote.name, max(cursor.pass_newest, newest)
        if newest > window:
            shard.newest = newest
            found.append(shard)
        if i + 1 < len(todo) and (len(found) >= limit or time.monotonic() >= deadline):
            return found  # the rest of the pass next tick
    cursor.since = max(cursor.since, min(cursor.pass_newest, cursor.pass_started))
    cursor.pass_started, cursor.pass_after, cursor.pass_newest = 0.0, None, 0.0
    return found


def queue_from_env(min_visibility: int = 0) -> NotificationQueue | None:
    """The queue of ``UPLOADS_QUEUE_URL``: a Cloudflare Queue (``cfqueue://``), an SQS queue, or
    None when unset."""
    return CloudflareQueue.from_env(min_visibility) or UploadQueue.from_env(min_visibility)


def queue_pass(batch: ShardBatch, source: S3Source, queue: NotificationQueue) -> tuple[list[str], list[str]]:
    """Receive one bounded batch into ``batch``: the receipt handles of every message received
    (all of them are handled by this tick, malformed ones included) and the problems found."""
    handles: list[str] = []
    problems: list[str] = []
    for message in queue.receive():
        handles.append(message.receipt_handle)
        try:
            created, bad = queue.parse(message.body)
        except MalformedEventError as exc:
            created, bad = [], [str(exc)]
        problems.extend(f"message {message.message_id}: {p}" for p in bad)
        for obj in created:
            if obj.bucket == source.bucket and obj.key.startswith(source.prefix) and not obj.key.endswith("/"):
                batch.add(f"s3://{obj.bucket}/{obj.key}", obj.etag, obj.event_time)
    return handles, problems


def dropbox_pass(batch: ShardBatch, source: DropboxSource, cursor: str, max_pages: int = DROPBOX_MAX_PAGES) -> str:
    """The changes since ``cursor`` into ``batch`` (at most ``max_pages`` pages, stopping early
    once the tick's run budget is full); the cursor to continue from."""
    after = cursor
    for pages, (entries, page_cursor, _) in enumerate(source.changes(cursor), start=1):
        for e in entries:
            batch.add(e.uri, e.marker, e.modified)
        after = page_cursor
        if pages >= max_pages or len(batch) >= MAX_RUNS_PER_TICK:
            break
    return after


def _dropbox_tick(sources: list[ImageSource], source: DropboxSource, cursor: UploadsCursor, now: float,
                  budget_seconds: float) -> TickPlan:
    new, notes = dataclasses.replace(cursor), []
    if cursor.dropbox and not cursor.listing:
        batch = ShardBatch(sources, source)
        try:
            new.dropbox = dropbox_pass(batch, source, cursor.dropbox)
            new.since = max(cursor.since, batch.newest)
            return TickPlan("dropbox", batch.shards(), new)
        except CursorResetError as exc:
            notes.append(f"{exc}: listing {source.uri} in full once")
            new.dropbox = ""
    if not new.dropbox:
        # before listing: what lands meanwhile comes as a change; a new pass from the start
        new.dropbox, new.pass_started = source.latest_cursor(), 0.0
    shards = listing_step(sources, source, new, now=now, budget_seconds=budget_seconds)
    return TickPlan("dropbox", shards, new, notes, listed=True)


def _queue_tick(sources: list[ImageSource], source: S3Source, cursor: UploadsCursor, queue: NotificationQueue,
                now: float, reconcile_seconds: float, budget_seconds: float) -> TickPlan:
    new, notes = dataclasses.replace(cursor, acks=[]), []
    if cursor.acks:  # the last tick's runs are submitted: Dagster committed its cursor
        failed = queue.acknowledge(cursor.acks)
        if failed:
            notes.append(f"{len(failed)} handled message(s) not deleted ({failed[0]}); they come back and are "
                         "requested again (their runs find nothing new)")
    batch = ShardBatch(sources, source)
    new.acks, problems = queue_pass(batch, source, queue)
    new.note_problems(problems)
    notes.extend(f"skipped a malformed notification: {p}" for p in problems)
    due = cursor.listing or not cursor.reconciled_at or (
        reconcile_seconds > 0 and now - cursor.reconciled_at >= reconcile_seconds)
    room = MAX_RUNS_PER_TICK - len(batch)
    listed = False
    if due and room > 0:
        try:
            batch.merge(listing_step(sources, source, new, now=now, budget_seconds=budget_seconds, limit=room))
        except SourceError as exc:  # the queue's batch still goes out; the pass goes on next tick
            notes.append(f"reconciliation listing of {source.uri} failed, tried again next tick: {exc}")
        else:
            listed = True
            if not new.listing:
                new.reconciled_at = now
    return TickPlan("queue", batch.shards(), new, notes, listed=listed, messages=len(new.acks))


def plan_tick(sources: list[ImageSource], source: ImageSource, cursor: UploadsCursor, *, queue: NotificationQueue | None,
              now: float, reconcile_seconds: float = DEFAULT_RECONCILE_SECONDS,
              budget_seconds: float = DEFAULT_LISTING_BUDGET_SECONDS) -> TickPlan:
    """One tick of the uploads sensor for ``source``. Raises ``SourceError`` or ``QueueError``
    when the source or queue cannot be read (the caller keeps the old cursor: nothing is lost)."""
    if isinstance(source, DropboxSource):
        return _dropbox_tick(sources, source, cursor, now, budget_seconds)
    if queue is not None and isinstance(source, S3Source):
        return _queue_tick(sources, source, cursor, queue, now, reconcile_seconds, budget_seconds)
    new = dataclasses.replace(cursor)
    shards = listing_step(sources, source, new, now=now, budget_seconds=budget_seconds)
    return TickPlan("listing", sorted(shards, key=lambda s: s.newest), new, listed=True)

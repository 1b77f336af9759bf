"""Run `dagster dev` (webserver + daemon) on loopback for the project's workspace and talk GraphQL to it.

Used by tests/platform/test_ui_backfill.py and docs/screenshot_ui.py. The process runs in its own
process group so the webserver, the daemon and the code server all stop together.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
DAGSTER = Path(sys.executable).with_name("dagster")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DagsterUI:
    """A `dagster dev` subprocess; ``graphql`` posts to its /graphql endpoint."""

    def __init__(self, env: Mapping[str, str], log_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [str(DAGSTER), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(self.port)],
            cwd=REPO_ROOT,
            env={**env, "DAGSTER_DISABLE_TELEMETRY": "1", "PYTHONUNBUFFERED": "1"},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: teardown kills webserver, daemon, code server
        )
        self.client = httpx.Client(base_url=self.url, timeout=30, trust_env=False)  # no proxies: loopback only

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def graphql(self, query: str, variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
        response = self.client.post("/graphql", json={"query": query, "variables": dict(variables or {})})
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise RuntimeError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def wait_until_loaded(self, timeout: float = 90) -> dict[str, Any]:
        """Block until the webserver answers and the code location finished loading; its entry."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dagster dev exited with {self.process.returncode}:\n{self.log()}")
            try:
                entries = self.graphql(WORKSPACE_QUERY)["workspaceOrError"]["locationEntries"]
            except (httpx.HTTPError, RuntimeError, KeyError):
                entries = []
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                return entries[0]
            time.sleep(1)
        raise TimeoutError(f"dagster dev did not load the workspace within {timeout}s:\n{self.log()}")

    def stop(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
            except ProcessLookupError:
                pass
        # children that outlived the parent (same group)
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._log.close()


WORKSPACE_QUERY = """
query {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError {
          __typename
          ... on PythonError { message stack }
          ... on RepositoryLocation {
            name
            repositories {
              name
              sensors { name }
              schedules { name }
              assetNodes { assetKey { path } groupName }
            }
          }
        }
      }
    }
  }
}
"""

"""Screenshot of the Dagster UI's global asset graph, taken from the running UI (`make screenshot`).

Builds a throwaway state folder (sample tree, shards registered, ingested through the CLI so the
graph shows materializations), starts `dagster dev` on loopback for the project's workspace,
waits until the code location is loaded and points headless Chromium at /asset-groups.

    .venv/bin/python docs/screenshot_ui.py [--out docs/img/asset-graph.png] [--budget-ms 15000]

Needs a `chromium` binary (Debian: `apt-get install chromium`); CI does not run this.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlencode

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))

from support.dagster_ui import DagsterUI  # noqa: E402

BIN = Path(sys.executable).parent
PAGE = "/asset-groups"  # Dagster 1.13: the global asset lineage (all groups of all locations)


def expanded_groups_query(location: dict) -> str:
    """``?expanded=`` opening every group: the global graph otherwise shows groups collapsed.
    Group ids are ``global@global:<group>`` (the UI's id without per-location groups)."""
    groups = sorted({n["groupName"] for r in location["repositories"] for n in r["assetNodes"] if n["groupName"]})
    return "?" + urlencode({"expanded": ",".join(f"global@global:{g}" for g in groups)})


def chromium_screenshot(url: str, out: Path, budget_ms: int, profile: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        raise SystemExit("chromium not found (Debian: apt-get install -y chromium)")
    subprocess.run(
        [
            browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--window-size=1600,1000", f"--virtual-time-budget={budget_ms}",
            f"--screenshot={out}", url,
        ],
        check=True,
        timeout=180,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "img" / "asset-graph.png")
    parser.add_argument("--budget-ms", type=int, default=15000, help="Chromium virtual time for the JS app to render")
    parser.add_argument("--no-ingest", action="store_true", help="skip ingesting the sample tree (faster, grey graph)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="assemblage-screenshot-"))
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "SUPABASE_DB_URL"}}
    env.update(
        ASSEMBLAGE_HOME=str(work / "state"),
        DAGSTER_HOME=str(work / "state" / "dagster"),
        IMAGES_DIR=str(work / "images"),
        ASSEMBLAGE_DEMO_TINY_MODEL="1",
    )

    def cli(*argv: str) -> None:
        subprocess.run([str(BIN / "assemblage"), *argv], env=env, check=True, cwd=REPO_ROOT)

    ui = None
    try:
        cli("sample-data", env["IMAGES_DIR"], "--photos-per-shard", "2")
        cli("dagster-config", "--write")
        cli("shards", "--register")
        if not args.no_ingest:
            cli("ingest")
        ui = DagsterUI(env, work / "dagster-dev.log")
        entry = ui.wait_until_loaded()
        url = ui.url + PAGE + expanded_groups_query(entry["locationOrLoadError"])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        chromium_screenshot(url, args.out.resolve(), args.budget_ms, work / "chromium-profile")
        print(f"wrote {args.out} from {url}")
    finally:
        if ui is not None:
            ui.stop()
        subprocess.run([str(BIN / "assemblage"), "db", "stop"], env=env, cwd=REPO_ROOT, check=False)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Headless Chromium for the browser tests (Debian's ``chromium``; .ci/run installs it): the
flags the machine's closed network needs, a fresh profile per run, and the skip when it is missing."""
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="headless Chromium missing: install it with `apt-get update && apt-get install -y chromium` (as root)")
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS_DIR") or ROOT / "reports" / "screenshots")


def chromium(args, tmp_path, timeout=90):
    """Run headless Chromium with ``args`` (e.g. ``--dump-dom URL``); returns its stdout."""
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.glob('chromium-profile-*')))}"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
           *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def rendered_dom(parser, url: str, tmp_path, flags=()):
    """Feed the DOM Chromium rendered for ``url`` (after scripts ran) to ``parser`` (an
    ``html.parser.HTMLParser`` that collects what the test checks) and return the parser."""
    parser.feed(chromium([*flags, "--dump-dom", url], tmp_path))
    return parser

"""Render a page in headless Chromium (Debian's `chromium` package; scripts/install.sh installs it): a screenshot,
and the page's own check of its images and errors, read from its DOM after load."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--allow-file-access-from-files"]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("no chromium: `apt-get install chromium` (scripts/install.sh does it where apt works)")
    return found


def render(page: Path, shot: Path) -> dict:
    """Screenshot `page` to `shot`; returns the page's self-check {images, broken, errors} plus the console
    errors Chromium logged and the screenshot's pixel spread."""
    exe, url = chromium(), page.resolve().as_uri()
    subprocess.run([exe, *FLAGS, "--window-size=1200,2400", f"--screenshot={shot}", url], capture_output=True,
                   timeout=120, check=True)
    dom = subprocess.run([exe, *FLAGS, "--virtual-time-budget=5000", "--enable-logging=stderr", "--v=0", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120, check=True)
    found = re.search(r'<pre id="selfcheck"[^>]*>(.*?)</pre>', dom.stdout, re.S)
    assert found and found.group(1), "the page's self-check did not run"
    check = json.loads(found.group(1).replace("&quot;", '"'))
    # Chromium prints the page's console messages as `CONSOLE(...)` / `Uncaught` lines on stderr.
    check["console"] = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    check["pixel_std"] = float(pixels.std())
    check["ink"] = float((pixels < 200).mean())  # share of pixels that are not (near) white
    return check


def assert_renders(page: Path, shot: Path, min_images: int) -> dict:
    check = render(page, shot)
    assert check["broken"] == [], f"broken images: {check['broken']}"
    assert check["errors"] == [] and check["console"] == [], (check["errors"], check["console"])
    assert check["images"] >= min_images
    assert check["pixel_std"] > 10 and check["ink"] > 0.01, "the page rendered blank"
    return check

"""Open a report in headless Chromium: a screenshot and a count of the images that decoded.

Used by ``scripts/screenshot_report.py`` and ``tests/test_report.py`` to check
that ``report.html`` renders offline. Needs Debian's ``chromium`` package
(``apt-get install chromium``); every call uses a fresh profile folder and
turns off networking, sync and component updates, so nothing leaves the machine.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars"]

_PROBE = ("<script>window.addEventListener('load',()=>{const i=[...document.images];"
          "document.body.setAttribute('data-decoded',i.filter(x=>x.complete&&x.naturalWidth>0).length+'/'+i.length);});</script>")


def chromium_path() -> Path | None:
    """``/usr/bin/chromium`` (or ``chromium`` on PATH), else ``None``."""
    for candidate in ("/usr/bin/chromium", shutil.which("chromium") or ""):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def _chromium(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    binary = chromium_path()
    if binary is None:
        raise FileNotFoundError("chromium not found: apt-get install chromium (Debian) to render reports headless")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        return subprocess.run([str(binary), *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                              timeout=timeout)


def screenshot(html: Path, out: Path, width: int = 1400, height: int = 3000) -> Path:
    """PNG screenshot (``width`` x ``height`` px) of ``html`` opened as a ``file://`` page; returns ``out``.

    Raises:
        FileNotFoundError: no chromium.
        RuntimeError: chromium wrote no screenshot (its stderr is in the message).
    """
    out = Path(out).resolve()
    out.unlink(missing_ok=True)
    result = _chromium(f"--screenshot={out}", f"--window-size={width},{height}", Path(html).resolve().as_uri())
    if not out.is_file():
        raise RuntimeError(f"chromium wrote no screenshot of {html}: {result.stderr[-2000:]}")
    return out


def decoded_images(html: Path) -> tuple[int, int]:
    """``(decoded, total)`` images of ``html`` once loaded in Chromium (a copy with a counting script is opened).

    Raises:
        FileNotFoundError: no chromium.
        RuntimeError: the page did not report a count (its stderr is in the message).
    """
    html = Path(html).resolve()
    with tempfile.TemporaryDirectory(prefix="report-probe-") as tmp:
        probe = Path(tmp) / html.name
        probe.write_text(html.read_text().replace("</body>", _PROBE + "</body>"))
        result = _chromium("--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    found = re.search(r'data-decoded="(\d+)/(\d+)"', result.stdout)
    if not found:
        raise RuntimeError(f"chromium did not report decoded images of {html}: {result.stderr[-2000:]}")
    return int(found.group(1)), int(found.group(2))

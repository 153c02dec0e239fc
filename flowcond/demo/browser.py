"""Driving the demo page in a headless Chromium (Debian's ``chromium`` and ``chromium-driver``,
with Selenium): what the browser test and ``benchmarks/demo.py`` share. Nothing is downloaded:
the system browser and driver are used, with its background networking off.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHROMIUM = os.environ.get("FLOWCOND_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("FLOWCOND_CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def missing() -> str | None:
    """Why the browser cannot be driven here (None when it can)."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (os.path.exists(path) or shutil.which(path)):
            return f"{path} not found: apt-get install -y chromium chromium-driver ({package})"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return 'selenium is not installed: pip install "flowcond[dev]"'
    return None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Server:
    """A running ``flowcond demo``: its page's URL and its process id."""

    url: str
    pid: int


@contextmanager
def serve(args: Sequence[str], port: int, timeout: float = 180.0) -> Iterator[Server]:
    """Run ``flowcond demo ARGS --port PORT`` in a subprocess until the page answers; yield it;
    stop that process (by its id) afterwards."""
    cmd = [sys.executable, "-c", "from flowcond.cli import cli; cli()", "demo", *args, "--port", str(port)]
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"flowcond demo exited with {proc.returncode}: {log.read().decode()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"flowcond demo did not answer on {url} in {timeout:.0f} s")
            time.sleep(0.5)
        yield Server(url, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@contextmanager
def chromium(width: int = 1400, height: int = 1100, downloads: str | Path | None = None) -> Iterator[Any]:
    """A headless Chromium WebDriver with a fresh profile (downloads go to ``downloads``), quit
    afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="flowcond-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which(CHROMIUM) or CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    if downloads is not None:
        options.add_experimental_option(
            "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
        )
    driver = webdriver.Chrome(service=Service(shutil.which(CHROMEDRIVER) or CHROMEDRIVER), options=options)
    if downloads is not None:
        driver.execute_cdp_cmd(
            "Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
        )
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def image_src(driver: Any, elem_id: str) -> str | None:
    """The ``src`` of the image shown in the Gradio component ``elem_id`` (None: none yet)."""
    return driver.execute_script(
        "const i = document.querySelector(arguments[0]); return i ? i.getAttribute('src') : null;",
        f"#{elem_id} img",
    )


def wait_for_new_src(driver: Any, elem_id: str, old: str | None, timeout: float = 60.0) -> str:
    """Wait until the image of ``elem_id`` has a ``src`` other than ``old``; return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        src = image_src(driver, elem_id)
        if src and src != old:
            return src
        time.sleep(0.05)
    raise TimeoutError(f"the image #{elem_id} did not change in {timeout:.0f} s")


def fetch(url: str, base: str) -> bytes:
    """The bytes behind an image ``src`` (relative to the page ``base``)."""
    from urllib.parse import urljoin

    with urllib.request.urlopen(urljoin(base, url), timeout=30) as r:
        return r.read()


def checkbox(driver: Any, label: str) -> Any:
    """The clickable label of the checkbox ``label``."""
    from selenium.webdriver.common.by import By

    return driver.find_element(By.XPATH, f"//label[.//input[@type='checkbox']][normalize-space(.)='{label}']")


def resources(driver: Any) -> list[str]:
    """Every URL the page loaded (the browser's resource timing entries and the page itself)."""
    return driver.execute_script(
        "return [location.href].concat(performance.getEntriesByType('resource').map(e => e.name));"
    )


def screenshot(driver: Any, path: str | Path) -> Path:
    """A PNG of the whole page (the window grown to the bottom of its lowest element first)."""
    bottom = driver.execute_script(
        "return Math.max(...[...document.querySelectorAll('body *')]"
        ".map(e => e.getBoundingClientRect().bottom + window.scrollY));"
    )
    width = driver.get_window_size()["width"]
    driver.set_window_size(width, min(int(bottom) + 140, 4000))
    time.sleep(0.5)
    driver.save_screenshot(str(path))
    return Path(path)


def choose(driver: Any, label: str, choice: str) -> None:
    """Pick ``choice`` in the dropdown labelled ``label`` (typed into its filter, then Enter)."""
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element("css selector", f"input[role='combobox'][aria-label='{label}']")
    box.click()
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(choice)
    time.sleep(0.3)
    box.send_keys(Keys.ENTER)


def wait_for_file(folder: str | Path, suffix: str, timeout: float = 60.0) -> Path:
    """The first complete file ending in ``suffix`` that appears in ``folder``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(Path(folder).glob(f"*{suffix}"))
        if found:
            return found[0]
        time.sleep(0.1)
    raise TimeoutError(f"no *{suffix} file appeared in {folder} in {timeout:.0f} s")

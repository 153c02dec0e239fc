"""``flowcond demo`` in a real headless browser: start it on a free localhost port, change a
control, check that the displayed samples changed, download the zip of images and commands, and
check that the page loaded nothing from outside.

Needs Debian's ``chromium`` and ``chromium-driver`` and the extra ``flowcond[demo]`` (Gradio,
Selenium); ``.ci/run`` installs them. Where they cannot be installed the test is skipped, saying
which is missing.
"""

from __future__ import annotations

import zipfile
from urllib.parse import urlparse

import pytest

from flowcond.demo import browser

pytest.importorskip("gradio", reason='the demo extra is not installed: pip install "flowcond[demo]"')
if (why := browser.missing()) is not None:
    pytest.skip(f"no headless browser: {why}", allow_module_level=True)


def test_changing_a_control_changes_the_displayed_samples(tiny_heads_file, tmp_path):
    port = browser.free_port()
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with (
        browser.serve([str(tiny_heads_file), "--n", "4"], port) as server,
        browser.chromium(downloads=downloads) as driver,
    ):
        url = server.url
        driver.get(url)
        first = browser.wait_for_new_src(driver, "samples", None, timeout=120)
        before = browser.fetch(first, url)
        assert before.startswith(b"\x89PNG")

        browser.checkbox(driver, "eyeglasses").click()
        second = browser.wait_for_new_src(driver, "samples", first)
        after = browser.fetch(second, url)
        assert after.startswith(b"\x89PNG") and after != before
        commands = driver.find_element("css selector", "#commands textarea").get_attribute("value")
        assert commands.startswith("flowcond sample ")
        assert "--condition=attributes=eyeglasses" in commands

        driver.find_element("css selector", "#download").click()  # images + commands, zipped
        with zipfile.ZipFile(browser.wait_for_file(downloads, ".zip")) as zf:
            assert zf.read("commands.sh").decode().strip() == commands.strip()
            assert zf.read("samples.png") == after

        urls = [urlparse(u) for u in browser.resources(driver)]
        hosts = {u.hostname for u in urls if u.scheme in ("http", "https", "ws", "wss")}
        assert hosts == {"127.0.0.1"}, f"the page fetched from elsewhere: {hosts}"

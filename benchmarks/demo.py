"""Time per update of ``flowcond demo``, and a screenshot of its page.

    python benchmarks/demo.py HEADS.safetensors [--changes 12] [--browser] [--screenshot PAGE.png]

*Render*: the renderer alone (what one control change computes: the sample grid, the cumulative
edits and the interpolation, their PNGs, the commands and the zip), for ``--changes`` views that
each change one control, after one warm-up; the median and the range of the wall time, and the
median CPU time of this process (with one torch thread, about the wall time on an idle core: a
figure that a busy machine does not inflate). *Browser* (``--browser``): the page served by
``flowcond demo`` in headless Chromium (Debian's ``chromium`` and ``chromium-driver``), timing a
click on a checkbox until the new sample grid is shown (the median over ``--changes`` clicks),
and the CPU time per click of the demo server and of the browser. ``--screenshot`` saves a fresh
page with the first dropdown at its eighth value (a 7 for digit ids).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from flowcond.demo.controls import Control
from flowcond.demo.render import Renderer, View


def views(renderer: Renderer, count: int) -> list[View]:
    """``count`` views, each changing one control of the first: the dropdown's value, one
    checkbox, one slider, the seed, in turn."""
    controls = renderer.controls
    states = [(False, [c.default] if c.widget != "sliders" else list(c.default)) for c in controls]
    edits = tuple(renderer.default_edits())
    out = []
    for i in range(count):
        c: Control = controls[i % len(controls)]
        random, raw = states[i % len(controls)]
        if c.widget in ("dropdown", "radio"):
            raw = [c.values[(c.values.index(raw[0]) + 1) % len(c.values)]]
        elif c.widget == "checkboxes":
            raw = [sorted(set(raw[0]) ^ {c.labels[i % len(c.labels)]})]
        elif c.widget == "sliders":
            lo, hi = c.ranges[0]
            raw = [lo + (hi - lo) * ((i * 0.37) % 1.0), *raw[1:]]
        states[i % len(controls)] = (random, raw)
        conditions = renderer.conditions(states)
        out.append(View(conditions, 0.7, i // len(controls), edits, conditions[:1]))
    return out


def render_times(renderer: Renderer, count: int) -> tuple[list[float], list[float]]:
    """Wall seconds and CPU seconds of this process per render."""
    renderer.render(views(renderer, 1)[0])  # warm-up
    wall, cpu = [], []
    for v in views(renderer, count):
        c0 = time.process_time()
        wall.append(renderer.render(v).seconds)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` and its descendants so far (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    parent, cpu = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        p = int(stat.parent.name)
        parent[p], cpu[p] = int(fields[1]), (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += cpu.get(p, 0.0)
        todo += [c for c, pp in parent.items() if pp == p]
    return total


def browser_times(
    heads: str, count: int, screenshot: str | None, dropdown: Control | None, threads: int = 1
) -> tuple[list[float], float, float]:
    """Seconds from each click to the new grid; CPU seconds per click of the demo server and of
    the browser (chromedriver and Chromium), summed over their processes."""
    from selenium.webdriver.common.by import By

    from flowcond.demo import browser

    if (why := browser.missing()) is not None:
        sys.exit(f"no headless browser: {why}")
    times = []
    port = browser.free_port()
    with browser.serve([heads, "--threads", str(threads)], port) as server, browser.chromium() as driver:
        driver.get(server.url)
        src = browser.wait_for_new_src(driver, "samples", None, timeout=180)
        boxes = driver.find_elements(By.XPATH, "//label[.//input[@type='checkbox']]")
        boxes = [b for b in boxes if "random" not in b.text]
        chrome = driver.service.process.pid
        for i in range(count + 1):
            if i == 1:  # the first is a warm-up
                cpu0 = tree_cpu_seconds(server.pid), tree_cpu_seconds(chrome)
            t0 = time.perf_counter()
            boxes[i % len(boxes)].click()
            src = browser.wait_for_new_src(driver, "samples", src)
            if i:
                times.append(time.perf_counter() - t0)
        server_cpu = (tree_cpu_seconds(server.pid) - cpu0[0]) / count
        browser_cpu = (tree_cpu_seconds(chrome) - cpu0[1]) / count
        if screenshot:  # a fresh page (the interpolation starts at the defaults), then a class
            driver.get(server.url)
            src = browser.wait_for_new_src(driver, "samples", None, timeout=180)
            if dropdown is not None:
                browser.choose(driver, dropdown.name, dropdown.labels[min(7, len(dropdown.labels) - 1)])
                browser.wait_for_new_src(driver, "samples", src)
            browser.screenshot(driver, screenshot)
    return times, server_cpu, browser_cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("heads")
    ap.add_argument("--changes", type=int, default=12)
    ap.add_argument("--browser", action="store_true")
    ap.add_argument("--screenshot", default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (flowcond demo's default)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    renderer = Renderer.load(args.heads)
    shape = "x".join(map(str, renderer.heads.backbone.image_shape))
    print(f"{args.heads}: {', '.join(renderer.heads.kinds)} on {shape}; grid of {renderer.n}")
    t, cpu = render_times(renderer, args.changes)
    print(
        f"render: median {1000 * statistics.median(t):.0f} ms per update "
        f"(min {1000 * min(t):.0f}, max {1000 * max(t):.0f}; {len(t)} changes); "
        f"CPU time median {1000 * statistics.median(cpu):.0f} ms; load average {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} cores"
    )
    if args.browser or args.screenshot:
        dropdowns = [c for c in renderer.controls if c.widget == "dropdown"]
        b, server_cpu, browser_cpu = browser_times(
            args.heads, args.changes, args.screenshot, (dropdowns or [None])[0], args.threads
        )
        print(
            f"browser: median {1000 * statistics.median(b):.0f} ms from click to new grid "
            f"(min {1000 * min(b):.0f}, max {1000 * max(b):.0f}; {len(b)} clicks); CPU time per "
            f"click: server {1000 * server_cpu:.0f} ms, browser {1000 * browser_cpu:.0f} ms; "
            f"load average {os.getloadavg()[0]:.1f}"
        )

        if args.screenshot:
            print(f"screenshot: {Path(args.screenshot)}")


if __name__ == "__main__":
    main()

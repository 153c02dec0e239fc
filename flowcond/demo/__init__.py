"""``flowcond demo``: an interactive page for a heads file (optional extra ``flowcond[demo]``).

- :mod:`flowcond.demo.controls`: one control per attached condition, derived from the condition
  kind's declared contract (``widget``, ``label_kind``, ``value_range``); no Gradio.
- :mod:`flowcond.demo.render`: the images of one state of the controls (sample grid, cumulative
  edits, interpolation), the exact ``flowcond`` commands that reproduce them and a zip to
  download; no Gradio, unit-testable.
- :mod:`flowcond.demo.app`: the Gradio page wiring controls to the renderer, and its launch.
- :mod:`flowcond.demo.browser`: driving the page in Debian's headless Chromium with Selenium
  (the browser test and ``benchmarks/demo.py``).

Importing this package imports neither torch nor Gradio.
"""

"""The Gradio page of ``flowcond demo``: the controls of :mod:`flowcond.demo.controls` wired to a
:class:`~flowcond.demo.render.Renderer`.

Gradio is imported inside the functions (it is the optional extra ``flowcond[demo]``), with its
analytics switched off; the page uses system fonts, so neither the server nor the browser fetches
anything from the internet. It binds to ``127.0.0.1`` unless told otherwise.
"""

from __future__ import annotations

import os
from typing import Any

from flowcond.demo.controls import Control
from flowcond.demo.render import Renderer, View
from flowcond.errors import ConfigError, FlowcondError

INSTALL_HINT = 'flowcond demo needs Gradio, the optional extra: pip install "flowcond[demo]"'
CSS = "#samples img, #edits img, #interpolation img { image-rendering: pixelated; }"


def check_gradio() -> None:
    """ConfigError naming the extra when Gradio is not installed (without importing it: that
    takes seconds)."""
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise ConfigError(INSTALL_HINT)


def import_gradio() -> Any:
    """The ``gradio`` module, with analytics off; ConfigError naming the extra if it is missing."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        import gradio
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return gradio


def _widgets(gr: Any, control: Control) -> list[Any]:
    """The input widgets of one control."""
    label, info = control.name, control.note or control.help or None
    if control.widget in ("dropdown", "radio"):
        cls = gr.Dropdown if control.widget == "dropdown" else gr.Radio
        choices = list(zip(control.labels, control.values, strict=True))
        return [cls(choices=choices, value=control.default, label=label, info=info)]
    if control.widget == "checkboxes":
        return [gr.CheckboxGroup(choices=list(control.labels), value=[], label=label, info=info)]
    if control.widget == "sliders":
        return [
            gr.Slider(lo, hi, value=v, step=step, label=f"{label} {name}")
            for name, (lo, hi), step, v in zip(
                control.labels, control.ranges, control.steps, control.default, strict=True
            )
        ]
    return [gr.Textbox(value="", label=label, placeholder=control.help, info="empty: random")]


def _image(gr: Any, label: str, elem_id: str) -> Any:
    """An output image (a PNG file) under a caption, with download and full-screen buttons (none
    to share)."""
    gr.Markdown(f"**{label}**")
    return gr.Image(
        label=label,
        show_label=False,
        type="filepath",
        format="png",
        interactive=False,
        buttons=["download", "fullscreen"],
        elem_id=elem_id,
    )


def build(renderer: Renderer, title: str = "flowcond demo") -> Any:
    """The page (a ``gradio.Blocks``) for ``renderer``: controls, the sample grid, cumulative
    edits, an interpolation strip, the commands that reproduce them and a download button."""
    gr = import_gradio()
    heads = renderer.heads
    flags: list[Any] = []
    widgets: list[list[Any]] = []
    # Gradio keeps a copy of every image it served: those older than 10 minutes are deleted
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(300, 600)) as app:
        gr.Markdown(
            f"## {title}\n`{renderer.heads_path}`: conditions "
            + ", ".join(f"`{n}`" for n in heads.kinds)
            + f" on a {'x'.join(map(str, heads.backbone.image_shape))} Glow backbone"
        )
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                for control in renderer.controls:
                    with gr.Group():
                        widgets.append(_widgets(gr, control))
                        flags.append(gr.Checkbox(False, label=f"{control.name}: random (its prior)"))
                temperature = gr.Slider(0.05, 1.5, value=0.7, step=0.05, label="temperature")
                with gr.Row():
                    seed = gr.Number(0, precision=0, minimum=0, label="seed", elem_id="seed")
                    new_seed = gr.Button("new seed", size="sm")
                edits_box = gr.Textbox(
                    "\n".join(renderer.default_edits()),
                    lines=4,
                    label="cumulative edits of one sample: NAME=VALUE a line (flowcond manipulate --add)",
                    elem_id="edits-text",
                )
                pin = gr.Button("start the interpolation at these controls", size="sm")
            with gr.Column(scale=2):
                status = gr.Markdown(elem_id="status")
                samples = _image(gr, "samples", "samples")
                edits = _image(gr, "cumulative edits", "edits")
                interpolation = _image(
                    gr, "interpolation: from the pinned start to the controls", "interpolation"
                )
                commands = gr.Textbox(
                    label="the commands that write these images",
                    lines=3,
                    interactive=False,
                    buttons=["copy"],
                    elem_id="commands",
                )
                download = gr.DownloadButton("download images + commands (zip)", elem_id="download")
        start = gr.State(())
        flat = [w for group in widgets for w in group]
        inputs = [temperature, seed, edits_box, start, *flags, *flat]
        outputs = [samples, edits, interpolation, commands, download, status]

        def states(values: tuple) -> list[tuple[bool, list]]:
            flag_values, rest, out = values[: len(flags)], list(values[len(flags) :]), []
            for control, random in zip(renderer.controls, flag_values, strict=True):
                out.append((bool(random), rest[: control.inputs]))
                rest = rest[control.inputs :]
            return out

        def update(t: float, s: float | None, edit_text: str, pinned: tuple, *values: Any) -> list:
            try:
                view = View(
                    renderer.conditions(states(values)),
                    float(t),
                    int(s or 0),
                    tuple(line.strip() for line in (edit_text or "").splitlines() if line.strip()),
                    tuple(pinned),
                )
                r = renderer.render(view)
            except FlowcondError as e:
                return [gr.skip()] * 5 + [f"**error:** {e}"]
            note = "" if r.interpolation else " (pin a start to see the interpolation)"
            shown = [str(p) if p else None for p in (r.samples, r.edits, r.interpolation)]
            return [*shown, r.commands, str(r.bundle), f"updated in {1000 * r.seconds:.0f} ms{note}"]

        def pin_start(*values: Any) -> tuple:
            try:
                return renderer.conditions(states(values))
            except FlowcondError:
                return ()

        triggers = [w.change for w in [*flags, *flat, temperature, seed]]
        triggers += [edits_box.submit, edits_box.blur]
        # no progress display: the spinners and timers over the images cost the browser more CPU
        # than the update (measured in headless Chromium: 1.5 s per update with, 0.4 s without)
        kw = {"trigger_mode": "always_last", "concurrency_limit": 1, "show_progress": "hidden"}
        gr.on(triggers, update, inputs, outputs, **kw)
        pin.click(pin_start, [*flags, *flat], start).then(update, inputs, outputs, show_progress="hidden")
        new_seed.click(lambda s: int(s or 0) + 1, seed, seed)
        app.load(pin_start, [*flags, *flat], start).then(update, inputs, outputs, show_progress="hidden")
    return app


def launch(renderer: Renderer, host: str = "127.0.0.1", port: int = 7860, block: bool = True) -> Any:
    """Serve the page on ``host:port`` (never shared through a tunnel); with ``block``, until
    interrupted. Returns the app."""
    gr = import_gradio()
    app = build(renderer)
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    app.queue(default_concurrency_limit=1).launch(
        server_name=host,
        server_port=port,
        share=False,
        inbrowser=False,
        prevent_thread_lock=not block,
        quiet=True,
        show_error=True,
        allowed_paths=[str(renderer.root)],
        ssr_mode=False,
        mcp_server=False,
        enable_monitoring=False,
        footer_links=[],
        theme=theme,
        css=CSS,
    )
    return app

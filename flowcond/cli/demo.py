"""``flowcond demo``: an interactive page for a heads file, served on localhost with Gradio (the
optional extra ``flowcond[demo]``). torch and Gradio are imported only when the command runs."""

from __future__ import annotations

import tempfile

import click

from flowcond.errors import ConfigError


def _check_port(host: str, port: int) -> None:
    """ConfigError naming ``--port`` / ``--host`` when the address cannot be bound now."""
    import socket

    try:
        with socket.create_server((host, port)):
            pass
    except OSError as e:
        raise ConfigError(
            f"--host {host} --port {port}: cannot serve there ({e.strerror or e}); choose another --port"
        ) from None


@click.command("demo")
@click.argument("heads_path", type=click.Path())
@click.option("--port", default=7860, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind; the default serves this machine only (0.0.0.0 serves the network).",
)
@click.option(
    "--backbone",
    type=click.Path(),
    default=None,
    help="Backbone file [default: the one recorded in the heads file].",
)
@click.option("--n", default=16, show_default=True, type=click.IntRange(1, 256), help="Samples in the grid.")
@click.option(
    "--threads",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="torch CPU threads (more than one on a busy machine is slower).",
)
def demo_cmd(heads_path, port, host, backbone, n, threads):
    """Play with HEADS_PATH in a browser: one control per attached condition, a sample grid that
    updates as they change, cumulative edits, an interpolation, and the flowcond commands that
    reproduce the images. Needs pip install "flowcond[demo]"."""
    from flowcond.demo.app import check_gradio

    check_gradio()  # a missing extra is one line, before loading any model
    _check_port(host, port)
    import torch

    from flowcond.demo.app import launch
    from flowcond.demo.render import Renderer

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="flowcond-demo-") as folder:  # removed on exit
        renderer = Renderer.load(heads_path, backbone, n=n, folder=folder)
        if not renderer.controls:
            raise ConfigError(f"{heads_path}: no condition plugin attached")
        click.echo(f"flowcond demo: http://{host}:{port}/ (Ctrl+C stops it)")
        launch(renderer, host, port, block=True)


COMMANDS = [demo_cmd]

"""``flowcond demo`` without a browser: controls derived from the condition kinds, the renderer,
the commands it prints (which must write the same PNGs byte for byte), the missing-extra message."""

from __future__ import annotations

import shlex
import sys
import zipfile
from typing import Any, ClassVar

import pytest
import torch

from flowcond.conditions import ConditionKind
from flowcond.demo.controls import condition_value, control_for, controls_for
from flowcond.demo.render import BUNDLE, COMMANDS, Renderer, View
from flowcond.errors import ConfigError, PluginError


@pytest.fixture
def renderer(tiny_heads_file, tmp_path) -> Renderer:
    return Renderer.load(str(tiny_heads_file), folder=tmp_path / "renders", n=9, keep=2)


def test_each_attached_condition_gets_the_control_its_kind_declares(renderer):
    by_name = {c.name: c for c in renderer.controls}
    assert list(by_name) == list(renderer.heads.kinds)
    ids, attributes, codes = by_name["ids"], by_name["attributes"], by_name["codes"]
    assert ids.widget == "dropdown" and ids.values == tuple(str(i) for i in range(10))
    assert attributes.widget == "checkboxes"
    assert attributes.labels == ("smiling", "eyeglasses", "male")
    assert codes.widget == "sliders" and codes.ranges == ((-1.0, 1.0), (-1.0, 1.0))
    assert codes.default == [0.0, 0.0] and codes.steps == (0.02, 0.02)


def test_control_values_are_condition_values_the_kinds_parse_back(renderer):
    states = [(False, ["7"]), (False, [["eyeglasses", "male"]]), (False, [0.5, -1.0])]
    conditions = renderer.conditions(states)
    assert conditions == ("ids=7", "attributes=eyeglasses,male", "codes=0.5,-1")
    targets = renderer.heads.parse_conditions(list(conditions))
    assert targets["attributes"].tolist() == [0.0, 1.0, 1.0]
    assert targets["codes"].tolist() == [0.5, -1.0]
    # random (prior) controls are left out of the conditions
    states[0] = (True, ["7"])
    assert renderer.conditions(states)[0] == "attributes=eyeglasses,male"
    with pytest.raises(ConfigError, match="ids: '12' is not one of its values"):
        renderer.conditions([(False, ["12"]), *states[1:]])


class _Kind(ConditionKind):
    """A plugin kind with no label kind: how the demo derives or takes its widget."""

    name = "mood"
    supervised = False
    value_help = "mood=0.2,0.4"
    ranges: ClassVar[Any] = None

    @classmethod
    def from_dataset(cls, options, dataset):
        return cls(options, {})

    target_shape = (2,)
    input_dim = head_dim = 2

    @property
    def value_range(self):
        return self.ranges

    def sample_prior(self, n, generator=None):
        return torch.zeros(n, 2)

    def parse(self, value):
        parts = [float(v) for v in value.split(",")]
        if len(parts) != 2 or not all(0 <= v <= 10 for v in parts):
            raise self.parse_error(value, "two numbers in [0, 10]")
        return torch.tensor(parts)

    def loss(self, head_out, targets):
        return head_out.sum()


def test_a_plugin_kind_gets_a_control_without_ui_code_and_may_declare_a_better_one():
    kind = _Kind(None)
    assert control_for("mood", kind).widget == "text"  # no label kind, no range
    kind.ranges = [(0.0, 2.0), (5.0, 10.0)]  # one range per column (continuous kinds)
    sliders = control_for("mood", kind)
    assert sliders.widget == "sliders" and sliders.ranges == ((0.0, 2.0), (5.0, 10.0))
    assert sliders.default == [1.0, 7.5]
    assert condition_value(sliders, kind, [0.5, 9.0]) == "0.5,9"
    kind.widget = "checkboxes"
    boxes = control_for("mood", kind)
    assert boxes.widget == "checkboxes" and boxes.labels == ("0", "1")
    assert condition_value(boxes, kind, [["1"]]) == "0,1"
    kind.widget = "radio"
    radio = control_for("mood", kind)  # values 0, 1, ... that parse refuses: a text box
    assert radio.widget == "text"
    kind.widget = "knob"
    with pytest.raises(PluginError, match="condition plugin 'mood': widget 'knob' is not one of"):
        control_for("mood", kind)


def test_sliders_of_a_kind_that_refuses_the_middle_jump_between_the_ends(renderer):
    from flowcond import registry

    binomial = registry.get_condition_kind("codes")({"distribution": "binomial", "n": 3}, {})
    c = controls_for({"codes": binomial})[0]
    assert c.steps == (1.0, 1.0, 1.0) and c.default == [0.0, 0.0, 0.0]
    assert binomial.parse(condition_value(c, binomial, [1.0, 0.0, 1.0])).tolist() == [1.0, 0.0, 1.0]


def test_the_printed_commands_write_the_shown_images_byte_for_byte(
    renderer, flowcond_cli, tmp_path, monkeypatch
):
    view = View(
        ("ids=3", "attributes=smiling", "codes=0.25,-0.5"),
        temperature=0.7,
        seed=5,
        edits=tuple(renderer.default_edits()),
        start=("ids=8", "codes=-1,1"),
    )
    assert view.edits == ("attributes=smiling", "attributes=eyeglasses", "attributes=male")
    shown = renderer.render(view)
    assert shown.edits is not None and shown.interpolation is not None
    lines = shown.commands.splitlines()
    assert [shlex.split(line)[1] for line in lines] == ["sample", "manipulate", "interpolate"]
    out = tmp_path / "cli"
    out.mkdir()
    monkeypatch.chdir(out)
    for line in lines:
        result = flowcond_cli(*shlex.split(line)[1:])
        assert result.exit_code == 0, result.output
    for png in (shown.samples, shown.edits, shown.interpolation):
        assert (out / png.name).read_bytes() == png.read_bytes(), png.name
    with zipfile.ZipFile(shown.bundle) as zf:
        assert sorted(zf.namelist()) == sorted(["samples.png", "edits.png", "interpolation.png", COMMANDS])
        assert zf.read(COMMANDS).decode() == shown.commands
    assert shown.bundle.name == BUNDLE


def test_a_control_change_changes_the_images_and_old_renders_are_removed(renderer):
    first = renderer.render(View(("ids=1",)))
    second = renderer.render(View(("ids=2",)))
    assert first.samples.read_bytes() != second.samples.read_bytes()
    assert first.edits is None and first.interpolation is None  # no edits, nothing pinned
    third = renderer.render(View(("ids=2",)))
    assert third.samples.read_bytes() == second.samples.read_bytes()  # same view, same images
    assert not first.folder.exists() and second.folder.exists()  # keep=2


def test_a_bad_view_is_a_one_line_error_and_nothing_is_rendered(renderer):
    with pytest.raises(ConfigError, match="class index out of range"):
        renderer.render(View(("ids=12",)))
    with pytest.raises(ConfigError, match="temperature"):
        renderer.render(View(("ids=1",), temperature=float("nan")))
    with pytest.raises(ConfigError, match="--add 'mood=1'"):
        renderer.render(View(("ids=1",), edits=("mood=1",)))
    assert not list(renderer.root.iterdir())


def test_without_the_extra_the_command_says_how_to_install_it(tiny_heads_file, flowcond_cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    result = flowcond_cli("demo", str(tiny_heads_file))
    assert result.exit_code == 1
    error = [line for line in result.stderr.splitlines() if not line.startswith("warning:")]
    assert error == ['Error: flowcond demo needs Gradio, the optional extra: pip install "flowcond[demo]"']


def test_the_page_builds_from_the_controls(renderer):
    pytest.importorskip("gradio", reason='the demo extra is not installed: pip install "flowcond[demo]"')
    from flowcond.demo.app import build

    app = build(renderer)
    config = app.get_config_file()
    types = [c["type"] for c in config["components"]]
    assert types.count("dropdown") == 1 and types.count("checkboxgroup") == 1
    assert types.count("slider") == 3  # two codes and the temperature
    ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
    assert {"samples", "edits", "interpolation", "commands", "download"} <= ids


def test_a_port_in_use_is_a_one_line_error(tiny_heads_file, flowcond_cli, monkeypatch):
    import socket

    pytest.importorskip("gradio", reason='the demo extra is not installed: pip install "flowcond[demo]"')
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = flowcond_cli("demo", str(tiny_heads_file), "--port", str(port))
    assert result.exit_code == 1
    assert f"Error: --host 127.0.0.1 --port {port}: cannot serve there" in result.stderr
    assert "choose another --port" in result.stderr and "Traceback" not in result.stderr

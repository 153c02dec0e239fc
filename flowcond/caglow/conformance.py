"""``check_condition_kind``: every contract check on one condition kind, for a plugin's own tests.

Like normflows' ``FlowTest``: a plugin author calls
``flowcond.testing.check_condition_kind(MyKind, options={...}, dataset=my_dataset)`` in a test and
gets a one-line :class:`~flowcond.errors.PluginError` naming the kind and the method for the first
thing that breaks the contract of ``docs/writing-plugins.md``.
"""

from __future__ import annotations

import json
import math
from typing import Any

import torch

from flowcond import contract
from flowcond.caglow.boundary import CHECK_ROWS, check_first_batch, plausible_rows
from flowcond.caglow.config import AttachConfig
from flowcond.caglow.heads import Heads
from flowcond.conditions import ConditionKind, check_kind
from flowcond.errors import FlowcondError, PluginError


def _call(kind: Any, method: str, f: Any, *args: Any) -> Any:
    """``f(*args)``; an exception that is not flowcond's own becomes a one-line PluginError."""
    try:
        return f(*args)
    except FlowcondError:
        raise
    except Exception as e:
        name = getattr(kind, "name", getattr(kind, "__name__", "?"))
        raise PluginError(f"condition plugin {name!r}: {method} raised {type(e).__name__}: {e}") from e


def _json(kind: Any, what: str, value: Any) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as e:
        raise PluginError(f"condition plugin {kind.name!r}: {what} is not JSON-serializable ({e})") from None


def _tiny_backbone(image_shape: tuple[int, ...], images: torch.Tensor) -> Any:
    from flowcond.flow.backbone import Backbone
    from flowcond.flow.config import BackboneConfig

    c, h, w = image_shape
    bb = Backbone(BackboneConfig(channels=c, height=h, width=w, levels=1, steps=1, hidden=8))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        bb.initialize(images[:16].float())
    return bb.freeze()


def check_condition_kind(
    kind_class: type,
    options: dict[str, Any] | None = None,
    dataset: Any = None,
    backbone: Any = None,
) -> ConditionKind:
    """Run every contract check on ``kind_class`` built with ``options`` on ``dataset`` (default:
    :func:`flowcond.testing.tiny_image_dataset`) and a tiny random backbone (or ``backbone``):
    registration (a concrete subclass with a valid ``name``), options and state JSON round-trip
    and rebuild, ``value_range``, ``targets`` / ``sample_prior`` / ``parse`` / ``edit`` shapes and
    dtypes, ``format`` -> ``parse`` round-trip, input module and head widths, a finite 0-d loss
    with a gradient, ``predict`` shape and dtype, finite ``metrics``, ``agrees`` None or ``(B,)``
    bool, and a sample through the heads. Returns the kind; a one-line PluginError at the first failure."""
    check_kind(kind_class, "check_condition_kind")
    if dataset is None:
        from flowcond.testing import tiny_image_dataset

        dataset = tiny_image_dataset()
    kind = _call(kind_class, "from_dataset()", kind_class.from_dataset, options, dataset)
    name = kind.name
    # options and state: JSON, and a kind rebuilt from them is the same kind
    opts = _json(kind, "options", kind.options.model_dump())
    state = _json(kind, "state()", kind.state())
    rebuilt = _call(kind, "__init__(options, state)", kind_class, opts, state)
    for attr in ("target_shape", "input_dim", "head_dim", "supervised"):
        if getattr(rebuilt, attr) != getattr(kind, attr):
            raise PluginError(
                f"condition plugin {name!r}: {attr} differs once rebuilt from options and state"
            )
    if _json(kind, "state()", rebuilt.state()) != state:
        raise PluginError(f"condition plugin {name!r}: state() differs once rebuilt from options and state")
    contract.check_value_range(kind)

    images = dataset.images_at(slice(0, min(len(dataset), 64))).float()
    bb = backbone if backbone is not None else _tiny_backbone(tuple(dataset.image_shape), images)
    z = bb.encode(images)
    labels = {k: v[: len(images)] for k, v in dataset.labels.items()}
    idx = plausible_rows(z, CHECK_ROWS)
    b = len(idx)
    g = torch.Generator().manual_seed(0)
    prior = contract.check_prior(kind, _call(kind, "sample_prior()", kind.sample_prior, b, g), b)
    if kind.supervised:
        batch_labels = {k: v[idx] for k, v in labels.items()}
        targets = contract.check_targets(kind, _call(kind, "targets()", kind.targets, batch_labels), b)
    else:
        targets = prior
    _round_trip(kind, targets)

    # the loss has a gradient; predict and metrics fit the targets
    head_out = torch.randn(b, kind.head_dim, generator=g, requires_grad=True)
    loss = contract.check_loss(kind, _call(kind, "loss()", kind.loss, head_out, targets))
    _call(kind, "loss().backward()", loss.backward)
    if head_out.grad is None or not bool(torch.isfinite(head_out.grad).all()):
        raise PluginError(f"condition plugin {name!r}: loss() has no finite gradient w.r.t. the head output")
    with torch.no_grad():
        predicted = _call(kind, "predict()", kind.predict, head_out.detach())
        contract.check_targets(kind, predicted, b, "predict()")
        metrics = _call(kind, "metrics()", kind.metrics, head_out.detach(), targets)
        agrees = _call(kind, "agrees()", kind.agrees, head_out.detach(), targets)
    if agrees is not None and not (
        isinstance(agrees, torch.Tensor) and agrees.dtype == torch.bool and tuple(agrees.shape) == (b,)
    ):
        got = (
            f"{agrees.dtype} {tuple(agrees.shape)}"
            if isinstance(agrees, torch.Tensor)
            else type(agrees).__name__
        )
        raise PluginError(
            f"condition plugin {name!r}: agrees() must return None or a bool tensor of shape "
            f"({b},), got {got}"
        )
    bad = {k: v for k, v in (metrics or {}).items() if not (isinstance(k, str) and _finite_number(v))}
    if not isinstance(metrics, dict) or bad:
        raise PluginError(
            f"condition plugin {name!r}: metrics() must return {{str: finite float}}, got {bad or metrics!r}"
        )

    # through real heads: first-batch checks as attach runs them, then a sample
    heads = Heads(bb, {name: kind}, AttachConfig(plugins=[name], hidden=16, trunk_hidden=16, noise_dim=4))
    check_first_batch(heads, z, labels, CHECK_ROWS)
    with torch.no_grad():
        given = heads.parse_conditions([f"{name}={kind.format(targets[0])}"])
        images_out, _ = heads.sample(given, n=2, temperature=0.5, seed=0)
    if images_out.shape[0] != 2:
        raise PluginError(f"condition plugin {name!r}: sampling 2 images gave {images_out.shape[0]}")
    return kind


def _finite_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _round_trip(kind: Any, targets: torch.Tensor) -> None:
    """``parse(format(t))`` gives ``t`` back (to 1e-4), and ``edit(t, format(t))`` a target."""
    for t in targets[:4]:
        text = _call(kind, "format()", kind.format, t)
        if not isinstance(text, str):
            raise PluginError(
                f"condition plugin {kind.name!r}: format() returned {type(text).__name__}, not str"
            )
        back = contract.check_target(kind, _call(kind, f"parse({text!r})", kind.parse, text))
        if not torch.allclose(back.double(), t.double(), rtol=1e-4, atol=1e-4):
            raise PluginError(
                f"condition plugin {kind.name!r}: parse(format(t)) is not t: format gave {text!r}, "
                f"parse gave {back.tolist()} for {t.tolist()}"
            )
        contract.check_target(kind, _call(kind, "edit()", kind.edit, t, text), "edit()")

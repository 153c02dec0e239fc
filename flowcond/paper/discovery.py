"""What ``flowcond evaluate`` runs on, found through the registry instead of built-in names.

* the dataset: the named one, or a registered dataset that ``extends`` it (the same images with
  more labels, e.g. ``mnist5k-morpho``), whichever first has a categorical *and* a binary field;
* the condition plugins playing each role (:class:`Roles`): the class (a kind whose
  ``label_kind`` is ``"categorical"``), the attributes (``label_kind == "binary"``), both given
  the dataset field as their option ``field``; and the unsupervised codes (``supervised = False``,
  given the number of codes as their option ``n``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flowcond import registry
from flowcond.datasets import ImageDataset, LabelField, load_dataset
from flowcond.errors import ConfigError
from flowcond.paper.config import EvaluateConfig


@dataclass(frozen=True)
class Roles:
    """Names of the condition plugins attached for the class, the attributes and the codes."""

    classes: str
    attributes: str
    codes: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        """``{"class": plugin, "attribute": plugin, "code": plugin or None}`` for results.json."""
        return {"class": self.classes, "attribute": self.attributes, "code": self.codes}


def dataset_candidates(name: str) -> list[str]:
    """``name`` itself, then the registered datasets declaring ``extends == name`` (sorted)."""
    sets = registry.datasets()
    extending = sorted(n for n, r in sets.items() if r.extends == name and n != name)
    return ([name] if name in sets else []) + extending


def resolve_dataset(name: str, root: str | None = None) -> tuple[str, ImageDataset, ImageDataset]:
    """The first candidate (:func:`dataset_candidates`) with a categorical and a binary field:
    its name, train and test splits. ConfigError naming the candidates tried otherwise."""
    candidates = dataset_candidates(name)
    for candidate in candidates:
        train = load_dataset(candidate, "train", root=root)
        kinds = {f.kind for f in train.schema.values()}
        if {"categorical", "binary"} <= kinds:
            return candidate, train, load_dataset(candidate, "test", root=root)
    tried = ", ".join(repr(c) for c in candidates) or f"none ({name!r} is not registered)"
    raise ConfigError(
        f"evaluate needs a dataset with a categorical (class) and a binary (attributes) "
        f"label field; tried {tried} (a dataset adding such labels to {name!r} can be "
        f"registered with extends={name!r})"
    )


def class_and_attribute_fields(ds: ImageDataset) -> tuple[LabelField, LabelField]:
    """The dataset's first categorical field (the class) and first binary field (attributes)."""
    cf = next(f for f in ds.schema.values() if f.kind == "categorical")
    af = next(f for f in ds.schema.values() if f.kind == "binary")
    return cf, af


def _pick(what: str, candidates: list[str], chosen: str | None, option: str) -> str:
    """One of ``candidates``: ``chosen`` if given, else the only one; ConfigError otherwise."""
    listing = ", ".join(candidates) or "none"
    if chosen is not None:
        if chosen not in candidates:
            raise ConfigError(f"{option}={chosen!r} is not a registered {what}; candidates: {listing}")
        return chosen
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ConfigError(f"evaluate needs a {what}; none is registered (see `flowcond plugins`)")
    flag = "--" + option.replace("_", "-")
    raise ConfigError(
        f"several condition plugins qualify as the {what}: {listing}; choose one with {option} ({flag})"
    )


def _require_option(kind: type, option: str, why: str) -> None:
    if option not in kind.Options.model_fields:
        raise ConfigError(
            f"condition plugin {kind.name!r} is used as {why} but its options have no {option!r} "
            f"(its options: {', '.join(kind.Options.model_fields) or 'none'})"
        )


def find_roles(cfg: EvaluateConfig) -> Roles:
    """The condition plugins for the class, attributes and (when ``cfg.codes``) codes.

    Kinds qualify by ``label_kind`` (class: categorical, attributes: binary) or, for codes, by
    ``supervised = False``; ``cfg.class_plugin`` / ``attribute_plugin`` / ``code_plugin`` choose
    among several. Their options must have ``field`` (labelled kinds) or ``n`` (codes).
    """
    kinds = {name: r.obj for name, r in registry.condition_kinds().items()}

    def with_label(kind: str) -> list[str]:
        return sorted(n for n, k in kinds.items() if k.label_kind == kind)

    cls = _pick(
        "categorical condition kind (class)", with_label("categorical"), cfg.class_plugin, "class_plugin"
    )
    attrs = _pick(
        "binary condition kind (attributes)", with_label("binary"), cfg.attribute_plugin, "attribute_plugin"
    )
    _require_option(kinds[cls], "field", "the class condition")
    _require_option(kinds[attrs], "field", "the attribute condition")
    codes = None
    if cfg.codes:
        unsupervised = sorted(n for n, k in kinds.items() if not k.supervised)
        codes = _pick("unsupervised condition kind (codes)", unsupervised, cfg.code_plugin, "code_plugin")
        _require_option(kinds[codes], "n", "the unsupervised codes (option n: the number of codes)")
    return Roles(cls, attrs, codes)


def plugin_options(roles: Roles, class_field: str, attribute_field: str, codes: int) -> dict[str, Any]:
    """The attach options of each role's plugin: ``field`` for class and attributes, ``n`` codes."""
    out: dict[str, Any] = {
        roles.classes: {"field": class_field},
        roles.attributes: {"field": attribute_field},
    }
    if roles.codes is not None:
        out[roles.codes] = {"n": codes}
    return out

"""``flowcond datasets``: every registered dataset with its label fields, sizes and image shape.

Sizes, label fields and image shapes are only known once a dataset is loaded, so this command
loads each one (both splits; torch is imported inside the command). A dataset that cannot be
loaded here (an on-disk one without ``--root``) is listed with the reason.
"""

from __future__ import annotations

import json
from typing import Any

import click

from flowcond import registry
from flowcond.errors import FlowcondError


def _conditions_by_label_kind() -> dict[str, list[str]]:
    """Condition kinds that take a label field of each kind as their targets (``label_kind``)."""
    out: dict[str, list[str]] = {}
    for name, item in sorted(registry.condition_kinds().items()):
        label_kind = getattr(item.obj, "label_kind", None)
        if label_kind:
            out.setdefault(label_kind, []).append(name)
    return out


def describe_dataset(name: str, item: Any, root: str | None, takes: dict[str, list[str]]) -> dict[str, Any]:
    """What ``flowcond datasets --json`` prints of one dataset (loads both splits)."""
    from flowcond.datasets import load_dataset

    info: dict[str, Any] = {
        "name": name,
        "description": item.description,
        "plugin": item.plugin,
        "extends": item.extends,
    }
    try:
        splits = {split: load_dataset(name, split, root=root) for split in ("train", "test")}
    except Exception as e:  # a listing reports a dataset that cannot load, and goes on
        return {**info, "error": str(e) if isinstance(e, FlowcondError) else f"{type(e).__name__}: {e}"}
    train = splits["train"]
    fields = []
    for f in train.schema.values():
        fields.append(
            {
                "name": f.name,
                "kind": f.kind,
                "size": f.size,
                "columns": f.columns,
                "class_names": list(f.names) if f.kind == "categorical" else [],
                "conditions": takes.get(f.kind, []),
            }
        )
    return {
        **info,
        "image_shape": list(train.image_shape),
        "sizes": {split: len(ds) for split, ds in splits.items()},
        "fields": fields,
    }


def _text(d: dict[str, Any]) -> list[str]:
    head = f"{d['name']}  ({d['plugin']}{', extends ' + d['extends'] if d['extends'] else ''})"
    lines = [head, f"  {d['description']}"] if d["description"] else [head]
    if "error" in d:
        return [*lines, f"  not loaded: {d['error']}"]
    shape = "x".join(map(str, d["image_shape"]))
    sizes = ", ".join(f"{split} {n:,}" for split, n in d["sizes"].items())
    lines.append(f"  images {shape}; {sizes}")
    for f in d["fields"]:
        if f["kind"] == "categorical":
            names = f["class_names"]
            shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            what = f"{f['size']} classes" + (f": {shown}" if names else "")
        else:
            what = f"{f['size']} column{'s' if f['size'] != 1 else ''}: {', '.join(f['columns'])}"
        use = f"  [conditions: {', '.join(f['conditions'])}]" if f["conditions"] else ""
        lines.append(f"  {f['name']:<15} {f['kind']:<12} {what}{use}")
    return lines


@click.command("datasets")
@click.argument("names", nargs=-1)
@click.option("--root", default=None, help="Data folder for on-disk datasets (mnist, celeba, folder).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def datasets_command(names: tuple[str, ...], root: str | None, as_json: bool) -> None:
    """List registered datasets (or only NAMES): label fields with their kinds and column names
    (address one column as FIELD.COLUMN, e.g. --option continuous.field=morphometrics.thickness),
    sizes per split and image shape. Loads every listed dataset to know these (seconds each for
    the built-in ones; on-disk datasets need --root)."""
    from flowcond.errors import ConfigError

    reg = registry.dataset_names()
    if names:  # plain or provider:name; an ambiguous plain name is a one-line PluginError
        found = {n: reg.find(n) for n in names}
        unknown = [n for n, item in found.items() if item is None]
        if unknown:
            raise ConfigError(f"unknown dataset(s) {', '.join(unknown)}; registered: {reg.listing()}")
    else:  # a name two plugins register is listed once per provider, by its qualified name
        found = {**reg.plain(), **{i.qualified: i for group in reg.ambiguous().values() for i in group}}
    takes = _conditions_by_label_kind()
    described = [describe_dataset(n, found[n], root, takes) for n in (names or sorted(found))]
    if as_json:
        click.echo(json.dumps(described, indent=2))
        return
    for i, d in enumerate(described):
        click.echo(("\n" if i else "") + "\n".join(_text(d)))


COMMANDS: list = [datasets_command]

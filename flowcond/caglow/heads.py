"""Heads attached to a frozen backbone: condition inputs, encoder ``E`` and supervision block.

``x = F^-1(E(c, eps))``. A heads file is a small safetensors file holding the weights of the
condition input modules, the encoder and the supervision block, with a header naming the plugins
(with versions, options and state), the attach config and the backbone's content hash. It refuses
to load against any other backbone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from flowcond import registry
from flowcond.caglow.config import AttachConfig
from flowcond.caglow.encoder import Encoder
from flowcond.caglow.supervision import SupervisionBlock
from flowcond.conditions import ConditionKind
from flowcond.errors import ConfigError, FileFormatError, PluginError, validation_message
from flowcond.flow.backbone import Backbone
from flowcond.io import safefile

KIND = "heads"


def resolve_module_kind(requested: str, backbone: Backbone) -> str:
    """``auto``: MLP for small latents (<= 4096 dims, paper MNIST), conv for large spatial ones."""
    if requested != "auto":
        return requested
    _, h, w = backbone.spatial_shape
    return "conv" if backbone.latent_dim > 4096 and h % 4 == 0 and w % 4 == 0 else "mlp"


def plugin_entries(kinds: Mapping[str, ConditionKind]) -> list[dict[str, Any]]:
    """What a heads file (and an attach checkpoint) records of each attached condition: its name,
    the plugin that registered it, that plugin's version, its options and its state."""
    known = registry.condition_kinds()
    entries = []
    for name, kind in kinds.items():
        reg = known.get(name)
        plugin = reg.plugin if reg else None
        mod = registry.pm.get_plugin(plugin) if plugin else None
        entries.append(
            {
                "name": name,
                "plugin": plugin,
                "version": registry.plugin_version(mod) if mod else None,
                "options": kind.options.model_dump(),
                "state": kind.state(),
            }
        )
    return entries


class Heads(nn.Module):
    """Conditional generator on a frozen backbone. ``kinds`` keeps the order of the plugins."""

    def __init__(self, backbone: Backbone, kinds: Mapping[str, ConditionKind], config: Any) -> None:
        super().__init__()
        object.__setattr__(self, "backbone", backbone)  # not a submodule: not saved with the heads
        self.kinds = dict(kinds)
        self.config = config
        enc_kind = resolve_module_kind(config.encoder, backbone)
        sup_kind = resolve_module_kind(config.supervision, backbone)
        self.inputs = nn.ModuleDict({n: k.input_module() for n, k in self.kinds.items()})
        self.cond_dim = sum(k.input_dim for k in self.kinds.values())
        self.encoder = Encoder(
            self.cond_dim,
            backbone.latent_dim,
            enc_kind,
            config.hidden,
            config.noise_dim,
            config.residual_noise,
            backbone.spatial_shape,
        )
        self.supervision = SupervisionBlock(
            backbone.latent_dim,
            {n: k.head_dim for n, k in self.kinds.items()},
            sup_kind,
            config.trunk_hidden,
            backbone.spatial_shape,
            cond_dim=sum(k.input_dim for k in self.kinds.values() if k.supervised)
            if config.conditional_discriminator
            else 0,
        )

    # -------------------------------------------------------------- conditions
    def condition_input(self, targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Targets of every plugin -> concatenated encoder input ``(B, cond_dim)``."""
        missing = [n for n in self.kinds if n not in targets]
        if missing:
            raise ConfigError(f"missing targets for condition plugin(s): {', '.join(missing)}")
        return torch.cat([self.inputs[n](targets[n]) for n in self.kinds], dim=1)

    def parse_conditions(self, values: Sequence[str]) -> dict[str, torch.Tensor]:
        """``["ids=7", "codes=0.5,-1"]`` -> ``{"ids": target, ...}`` (one target per plugin)."""
        out: dict[str, torch.Tensor] = {}
        for item in values:
            name, sep, value = item.partition("=")
            name = name.strip()
            if not sep:
                raise ConfigError(f"condition {item!r} must look like NAME=VALUE, e.g. {self._example()}")
            if name not in self.kinds:
                raise ConfigError(
                    f"condition {item!r}: plugin {name!r} is not attached; this heads file has "
                    f"{', '.join(self.kinds)}"
                )
            out[name] = self.kinds[name].parse(value.strip())
        return out

    def _example(self) -> str:
        return " ".join(k.value_help for k in self.kinds.values() if k.value_help) or "ids=3"

    def expand_targets(self, n: int, given: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Given targets (one per plugin, or already ``n``) repeated to ``n`` rows."""
        out = {}
        for name, t in given.items():
            t = torch.as_tensor(t)
            single = t.dim() == len(self.kinds[name].target_shape)
            out[name] = t.unsqueeze(0).expand(n, *t.shape).clone() if single else t
        return out

    def sample_targets(
        self,
        n: int,
        given: Mapping[str, torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """``n`` targets per plugin: the given one repeated, else drawn from the plugin's prior."""
        out = self.expand_targets(n, given or {})
        for name, kind in self.kinds.items():
            if name not in out:
                out[name] = kind.sample_prior(n, generator)
        return {name: out[name] for name in self.kinds}

    # ----------------------------------------------------------------- latents
    def noise(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise ``(eps, eps_res)`` for ``n`` samples at ``temperature`` (finite, in
        ``[0, MAX_TEMPERATURE]``: anything else is a :class:`ConfigError`)."""
        from flowcond.flow.config import check_temperature

        check_temperature(temperature, allow_zero=True)
        if n < 0:
            raise ConfigError(f"cannot draw noise for {n} samples")
        eps = torch.randn(n, self.encoder.noise_dim, generator=generator) * temperature
        eps_res = torch.randn(n, self.backbone.latent_dim, generator=generator) * temperature
        return eps, eps_res

    def generate_from_input(self, c: torch.Tensor, eps: torch.Tensor, eps_res: torch.Tensor) -> torch.Tensor:
        """Encoder input + noise -> flat standardized latent ``(B, D)``."""
        out = self.encoder(c, eps, eps_res)
        return self.backbone.to_flat(out) if self.encoder.spatial else out

    def generate(
        self,
        targets: Mapping[str, torch.Tensor],
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``E(c, eps)``: targets -> flat latents, noise at ``temperature``."""
        c = self.condition_input(targets)
        eps, eps_res = self.noise(c.shape[0], temperature, generator)
        return self.generate_from_input(c, eps, eps_res)

    def supervised_input(self, targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Encoder inputs of the supervised kinds only (what a conditional discriminator sees)."""
        parts = [self.inputs[n](targets[n]) for n, k in self.kinds.items() if k.supervised]
        return torch.cat(parts, dim=1) if parts else torch.zeros(len(next(iter(targets.values()))), 0)

    def supervise(
        self, z: torch.Tensor, targets: Mapping[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Flat latents -> (trunk features, discriminator logits, head outputs).

        With ``conditional_discriminator``, the logits also depend on the supervised ``targets``.
        """
        c = None
        if targets is not None and self.supervision.projection is not None:
            c = self.supervised_input(targets).detach()
        return self.supervision(self.backbone.to_spatial(z) if self.supervision.spatial else z, c)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Latents -> images through the frozen backbone, in batches. Non-finite latents or
        pixels are a FlowcondError saying how many of how many (:meth:`Backbone.decode`)."""
        return self.backbone.decode_in_batches(z, batch_size)

    @torch.no_grad()
    def sample(
        self,
        conditions: Mapping[str, torch.Tensor] | Sequence[str] | None = None,
        n: int = 16,
        temperature: float = 0.8,
        seed: int | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``n`` images ``x = F^-1(E(c, eps))`` for the given conditions (others from their priors).

        ``conditions`` is ``{"ids": tensor(7)}`` or ``["ids=7"]``. Returns (images, targets).
        ``n >= 1``, ``temperature`` finite in ``[0, MAX_TEMPERATURE]``, ``seed`` in
        ``[0, 2**63 - 1]``: anything else is a :class:`ConfigError`.
        """
        import numbers

        from flowcond.flow.config import SEED_MAX, check_temperature

        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ConfigError(f"n={n!r}: the number of images must be an integer >= 1")
        check_temperature(temperature, allow_zero=True)
        if seed is not None and not (isinstance(seed, numbers.Integral) and 0 <= seed <= SEED_MAX):
            raise ConfigError(f"seed={seed!r}: must be an integer in [0, {SEED_MAX}]")
        if conditions is not None and not isinstance(conditions, Mapping):
            conditions = self.parse_conditions(list(conditions))
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        targets = self.sample_targets(n, conditions, g)
        return self.decode(self.generate(targets, temperature, g)), targets

    # -------------------------------------------------------------------- files
    def head_weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.state_dict().items()}

    def save(self, path: str | os.PathLike, **metadata: Any) -> None:
        """Write the heads file atomically."""

        entries = plugin_entries(self.kinds)
        weights = self.head_weights()
        header = {
            "kind": KIND,
            "backbone": {
                "content_hash": self.backbone.content_hash,
                "config": self.backbone.config.model_dump(),
                "path": metadata.pop("backbone_path", None),
            },
            "plugins": entries,
            "attach_config": self.config.model_dump(),
            "content_hash": safefile.content_hash(weights),
            **metadata,
        }
        safefile.write(path, weights, header)

    @classmethod
    def load(cls, path: str | os.PathLike, backbone: Backbone | str | os.PathLike | None = None) -> Heads:
        """Validate and load a heads file onto ``backbone`` (default: the backbone path it records,
        relative to the heads file's folder first, then to the current directory).

        The header is validated before anything is built (a FileFormatError names the file and
        the field), and the tensors its plugins and attach config imply (from a build on the
        ``meta`` device, which allocates nothing) are compared with the ones the file holds.
        """
        header, specs = safefile.read_layout(path, KIND)
        info = check_heads_header(path, header)
        if backbone is None:
            backbone = _recorded_backbone(path, info.backbone.path)
        bb_path = backbone if not isinstance(backbone, Backbone) else None
        if bb_path is not None:
            backbone = Backbone.load(bb_path)
        if backbone.content_hash != info.backbone.content_hash:
            where = f" ({bb_path})" if bb_path else ""
            raise FileFormatError(
                path,
                f"was attached to backbone {info.backbone.content_hash[:12]}, not to the given "
                f"backbone{where} {backbone.content_hash[:12]}",
            )
        kinds = {}
        available = registry.condition_kinds()
        for i, entry in enumerate(info.plugins):
            name = entry.name
            if name not in available:
                raise PluginError(
                    f"{path}: needs condition plugin {name!r} (from {entry.plugin}, version "
                    f"{entry.version}), which is not installed"
                )
            try:
                kinds[name] = available[name].obj(entry.options, entry.state)
            except ConfigError as e:
                raise FileFormatError(path, f"plugins.{i} ({name}): {e}") from None
        try:
            config = AttachConfig(**header["attach_config"])
        except ValidationError as e:
            raise FileFormatError(
                path, f"invalid attach config in header: {validation_message(e, 'attach_config')}"
            ) from None
        expected = _expected_weights(path, backbone, kinds, config)
        tensors, _ = safefile.read(path, KIND, expected, against="the header")
        heads = cls(backbone, kinds, config)
        safefile.load_weights(heads, tensors, path, against="the header")
        heads.metadata = {k: v for k, v in header.items() if k not in ("kind", "format_version")}
        return heads.eval()


class BackboneRef(BaseModel):
    """``backbone`` of a heads header: the backbone the heads were attached to."""

    model_config = ConfigDict(extra="allow")

    content_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    config: dict[str, Any] | None = None
    path: str | None = Field(None, max_length=4096)


class PluginEntry(BaseModel):
    """One entry of ``plugins`` of a heads header: a condition kind and how to rebuild it."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=200)
    plugin: str | None = None
    version: str | None = None
    options: dict[str, Any] | None = None
    state: dict[str, Any]


class HeadsHeader(BaseModel):
    """The fields of a heads header :meth:`Heads.load` reads (others are kept as they are)."""

    model_config = ConfigDict(extra="allow")

    backbone: BackboneRef
    plugins: list[PluginEntry] = Field(min_length=1, max_length=256)
    attach_config: dict[str, Any]
    content_hash: str


def check_heads_header(path: str | os.PathLike, header: dict[str, Any]) -> HeadsHeader:
    """A heads header's fields with their types; FileFormatError naming the file and the field."""
    try:
        info = HeadsHeader.model_validate(header)
    except ValidationError as e:
        raise FileFormatError(
            path, f"invalid heads header: {validation_message(e, whole='header')}"
        ) from None
    names = [p.name for p in info.plugins]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise FileFormatError(path, f"invalid heads header: plugins: {', '.join(twice)} listed twice")
    return info


def _recorded_backbone(path: str | os.PathLike, recorded: str | None) -> Path:
    """The backbone file a heads file records: relative to the heads file's folder first."""
    if not recorded:
        raise FileFormatError(path, "records no backbone path; pass --backbone")
    rec = Path(recorded)
    candidates = [rec] if rec.is_absolute() else [Path(path).parent / rec, rec]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise FileFormatError(path, f"its backbone {recorded} was not found; pass --backbone")
    return found


def _expected_weights(
    path: str | os.PathLike, backbone: Backbone, kinds: dict[str, ConditionKind], config: AttachConfig
) -> dict[str, safefile.TensorSpec]:
    """The tensors of ``Heads(backbone, kinds, config)``, from a build on the meta device."""
    try:
        return safefile.meta_specs(lambda: Heads(backbone, kinds, config))
    except Exception as e:  # what the header asks for cannot be built: the header is wrong
        raise FileFormatError(
            path, f"its plugins and attach config do not build heads: {safefile.one_line(e)}"
        ) from None

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

from flowcond import contract, registry
from flowcond.caglow.config import AttachConfig
from flowcond.caglow.encoder import Encoder
from flowcond.caglow.image_check import ImageCheck, checked_images
from flowcond.caglow.label_table import PRIORS, LabelTable, joint_targets, table_specs
from flowcond.caglow.providers import plugin_entries, resolve_kind
from flowcond.caglow.supervision import SupervisionBlock
from flowcond.conditions import ConditionKind, malformed_condition
from flowcond.errors import ConfigError, FileFormatError, validation_message
from flowcond.flow.backbone import Backbone
from flowcond.io import safefile

KIND = "heads"


def resolve_module_kind(requested: str, backbone: Backbone) -> str:
    """``auto``: MLP for small latents (<= 4096 dims, paper MNIST), conv for large spatial ones."""
    if requested != "auto":
        return requested
    _, h, w = backbone.spatial_shape
    return "conv" if backbone.latent_dim > 4096 and h % 4 == 0 and w % 4 == 0 else "mlp"


class Heads(nn.Module):
    """Conditional generator on a frozen backbone. ``kinds`` keeps the order of the plugins."""

    def __init__(self, backbone: Backbone, kinds: Mapping[str, ConditionKind], config: Any) -> None:
        super().__init__()
        object.__setattr__(self, "backbone", backbone)  # not a submodule: not saved with the heads
        self.kinds = dict(kinds)
        self.config = config
        #: training targets of the supervised kinds (the joint prior of un-given conditions);
        #: None for heads attached before it existed (then only the independent priors)
        self.label_table: LabelTable | None = None
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
        supervised = {n: k.head_dim for n, k in self.kinds.items() if k.supervised}
        #: the image check of checked sampling (attach --image-check), None without one
        self.image_check = (
            ImageCheck(backbone.image_shape, supervised) if config.image_check and supervised else None
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
                raise malformed_condition(item, self.kinds)
            if name not in self.kinds:
                raise ConfigError(
                    f"condition {item!r}: plugin {name!r} is not attached; this heads file has "
                    f"{', '.join(self.kinds)}"
                )
            kind = self.kinds[name]
            out[name] = contract.check_target(kind, kind.parse(value.strip()))
        return out

    def expand_targets(self, n: int, given: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Given targets (one per plugin, or already ``n``) repeated to ``n`` rows."""
        out = {}
        for name, t in given.items():
            t = torch.as_tensor(t)
            shape = tuple(self.kinds[name].target_shape)
            if tuple(t.shape) not in (shape, (n, *shape)):
                raise ConfigError(
                    f"target of {name!r} has shape {tuple(t.shape)}, expected {shape} (one target) "
                    f"or {(n, *shape)} (one per image)"
                )
            single = t.dim() == len(shape)
            out[name] = t.unsqueeze(0).expand(n, *t.shape).clone() if single else t
        return out

    def sample_targets(
        self,
        n: int,
        given: Mapping[str, torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
        prior: str = "joint",
    ) -> dict[str, torch.Tensor]:
        """``n`` targets per plugin: the given one repeated, else drawn from its prior.

        ``prior="joint"`` (default): the supervised kinds not given come from a random training
        row matching the given ones (:class:`~flowcond.caglow.label_table.LabelTable`); rows no
        training row matches, and heads without a table, fall back to the independent priors,
        said on stderr. ``"independent"``: each kind's own prior. Unsupervised kinds always draw
        from their own prior.
        """
        if prior not in PRIORS:
            raise ConfigError(f"--prior {prior}: choose one of {', '.join(PRIORS)}")
        out = self.expand_targets(n, given or {})
        if prior == "joint":
            joint_targets(self.kinds, self.label_table, out, n, generator)
        for name, kind in self.kinds.items():
            if name not in out:
                out[name] = contract.check_prior(kind, kind.sample_prior(n, generator), n)
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
        device = self.backbone.device  # the backbone may run on a GPU, the heads on the CPU
        return self.backbone.decode_in_batches(z.to(device), batch_size).to(z.device)

    @torch.no_grad()
    def sample(
        self,
        conditions: Mapping[str, torch.Tensor] | Sequence[str] | None = None,
        n: int = 16,
        temperature: float = 0.8,
        seed: int | None = None,
        check: bool = True,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``n`` images ``x = F^-1(E(c, eps))`` for the given conditions (others from their priors).

        ``conditions`` is ``{"ids": tensor(7)}`` or ``["ids=7"]``. Returns (images, targets).
        With ``check`` and an image check in the heads (``attach --image-check``), samples whose
        image disagrees with a given condition are redrawn (:mod:`flowcond.caglow.image_check`).
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
        images, targets, _ = self.checked(
            targets, temperature, g, list(conditions or {}) if check else [], "joint"
        )
        return images, targets

    def checked(
        self,
        targets: Mapping[str, torch.Tensor],
        temperature: float,
        generator: torch.Generator | None,
        given: Sequence[str],
        prior: str | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]:
        """Images for ``targets``; with an image check, those disagreeing with a ``given`` kind
        drawn again (with ``prior``, their other conditions too). Returns images, targets and the
        check's report (:func:`~flowcond.caglow.image_check.checked_images`)."""
        return checked_images(self, targets, temperature, generator, given, prior)

    # -------------------------------------------------------------------- files
    def head_weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.state_dict().items()}

    def save(self, path: str | os.PathLike, **metadata: Any) -> None:
        """Write the heads file atomically."""

        entries = plugin_entries(self.kinds)
        weights = self.head_weights()
        if self.label_table is not None:
            weights.update(self.label_table.tensors())
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
        names = registry.condition_kind_names()
        for i, entry in enumerate(info.plugins):
            name = entry.name
            kind_class = resolve_kind(path, entry, names)  # recorded distribution checked
            try:
                kinds[name] = kind_class(entry.options, entry.state)
            except ConfigError as e:
                raise FileFormatError(path, f"plugins.{i} ({name}): {e}") from None
        try:
            config = AttachConfig(**header["attach_config"])
        except ValidationError as e:
            raise FileFormatError(
                path, f"invalid attach config in header: {validation_message(e, 'attach_config')}"
            ) from None
        expected = _expected_weights(path, backbone, kinds, config)
        expected.update(table_specs(specs))
        tensors, _ = safefile.read(path, KIND, expected, against="the header")
        table = LabelTable.pop_from(tensors, path, kinds)
        heads = cls(backbone, kinds, config)
        safefile.load_weights(heads, tensors, path, against="the header")
        heads.label_table = table
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
    #: the distribution that provided the kind, and its version (None: an older heads file, or
    #: a --plugins-dir or test plugin)
    distribution: str | None = Field(None, max_length=200)
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

"""The three compared methods, each seen as a :class:`Generator` driven by the same conditions.

``latents(w, v, noise)``: class weights ``w`` (N, K) (one-hot; soft for interpolation),
attributes ``v`` (N, A) in [0, 1] (outside for sweeps) and a method's own noise (a tuple of
tensors with N rows) -> latents; ``decode`` turns them into images.

* :class:`CAGlowGenerator`: heads attached to the frozen backbone, the class / attribute / code
  plugins found by role (:class:`flowcond.paper.discovery.Roles`);
* :class:`CGlowGenerator`: CGlow's prior at ``[one-hot class, attributes]``;
* :class:`PreStoredGenerator`: Glow prior samples moved by the pre-stored features,
  ``z = T eps + shift_k + alpha * sum_a (v_a - 1/2) delta_a``.
"""

from __future__ import annotations

from typing import Any

import torch

from flowcond.errors import ConfigError
from flowcond.flow.backbone import Backbone
from flowcond.paper.baselines import CGlow, PreStored
from flowcond.paper.discovery import Roles

Noise = tuple[torch.Tensor, ...]


class Generator:
    """A conditional generator seen through ``latents(w, v, noise)`` and ``decode(z)``."""

    name: str

    def noise(self, n: int, g: torch.Generator) -> Noise:
        """``n`` rows of this method's noise."""
        raise NotImplementedError

    def latents(self, w: torch.Tensor, v: torch.Tensor, noise: Noise) -> torch.Tensor:
        """Latents for class weights ``w`` (N, K), attributes ``v`` (N, A) and ``noise``."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Images of latents ``z``."""
        raise NotImplementedError

    @torch.no_grad()
    def images(self, w: torch.Tensor, v: torch.Tensor, noise: Noise, batch_size: int = 256) -> torch.Tensor:
        """``decode(latents(w, v, noise))``, ``batch_size`` rows at a time."""
        out = []
        for i in range(0, len(w), batch_size):
            sl = slice(i, i + batch_size)
            out.append(self.decode(self.latents(w[sl], v[sl], tuple(t[sl] for t in noise))))
        return torch.cat(out)


class CAGlowGenerator(Generator):
    """CAGlow heads; noise is ``(eps, eps_res)`` plus the codes when a code plugin is attached."""

    name = "CAGlow"

    def __init__(self, heads: Any, temperature: float, roles: Roles, n_classes: int) -> None:
        unknown = [n for n in heads.kinds if n not in (roles.classes, roles.attributes, roles.codes)]
        if unknown:
            raise ConfigError(f"the CAGlow heads carry plugin(s) with no role: {', '.join(unknown)}")
        self.heads, self.T, self.roles = heads, temperature, roles
        with torch.no_grad():  # (K, dim), linear in one-hot: soft class weights interpolate
            self.class_table = heads.inputs[roles.classes](torch.arange(n_classes))

    def noise(self, n: int, g: torch.Generator) -> Noise:
        eps, eps_res = self.heads.noise(n, self.T, g)
        codes = [self.heads.kinds[self.roles.codes].sample_prior(n, g)] if self.roles.codes else []
        return (eps, eps_res, *codes)

    @torch.no_grad()
    def latents(self, w: torch.Tensor, v: torch.Tensor, noise: Noise) -> torch.Tensor:
        c = torch.cat([self._input(name, w, v, noise) for name in self.heads.kinds], 1)
        return self.heads.generate_from_input(c, noise[0], noise[1])

    def _input(self, name: str, w: torch.Tensor, v: torch.Tensor, noise: Noise) -> torch.Tensor:
        """Encoder input slice of plugin ``name`` by its role."""
        if name == self.roles.classes:
            return w @ self.class_table
        if name == self.roles.attributes:
            return self.heads.inputs[name](v)
        return self.heads.inputs[name](noise[2])  # the codes

    def decode(self, z: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        return self.heads.decode(z, batch_size)


class CGlowGenerator(Generator):
    """CGlow: its conditional prior at ``[w, v]``, then its own flow."""

    name = "CGlow"

    def __init__(self, model: CGlow, temperature: float) -> None:
        self.model, self.T = model, temperature

    def noise(self, n: int, g: torch.Generator) -> Noise:
        return (self.model.noise(n, self.T, g),)

    @torch.no_grad()
    def latents(self, w: torch.Tensor, v: torch.Tensor, noise: Noise) -> torch.Tensor:
        dev = self.model.backbone.device  # CGlow may have trained on a GPU; rows stay on the CPU
        return self.model.latents(torch.cat([w, v.float()], 1).to(dev), noise[0].to(dev)).cpu()

    def decode(self, z: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        return self.model.decode(z, batch_size)


class PreStoredGenerator(Generator):
    """Glow + pre-stored: a prior sample moved by the class shift and the attribute deltas."""

    name = "Glow + pre-stored"

    def __init__(self, backbone: Backbone, features: PreStored, temperature: float, alpha: float) -> None:
        self.backbone, self.features, self.T, self.alpha = backbone, features, temperature, alpha

    def noise(self, n: int, g: torch.Generator) -> Noise:
        return (torch.randn(n, self.backbone.latent_dim, generator=g) * self.T,)

    @torch.no_grad()
    def latents(self, w: torch.Tensor, v: torch.Tensor, noise: Noise) -> torch.Tensor:
        f = self.features
        return noise[0] + w @ f.class_shifts + self.alpha * (v.float() - 0.5) @ f.deltas

    def decode(self, z: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        return self.backbone.decode_in_batches(z, batch_size)


#: the conditional methods compared, in table order
METHODS = (CAGlowGenerator.name, CGlowGenerator.name, PreStoredGenerator.name)


def tag(gen: Generator) -> str:
    """File-name tag of a method: ``caglow``, ``cglow``, ``glow_prestored``."""
    return gen.name.lower().replace(" + ", "_").replace(" ", "_").replace("-", "")

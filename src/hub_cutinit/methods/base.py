"""The base class of every SSL method: one step API for the trainer and the norm tracker.

A method subclass builds its heads in :meth:`SSLModel.build_heads` and computes its loss in
:meth:`SSLModel.compute`. Everything else — view validation, the momentum teacher, the record
of the cut, the config that rebuilds the model — lives here.

Example:
    >>> import torch
    >>> from hub_cutinit import create_ssl_model
    >>> model = create_ssl_model("simclr", "resnet18")
    >>> out = model([torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)])
    >>> sorted(out.embeddings), out.loss.ndim
    (['backbone', 'projection'], 0)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

__all__ = [
    "COMMON_DEFAULTS",
    "MOMENTUM_SCHEDULES",
    "SSLModel",
    "SSLOutput",
    "ViewSpec",
    "cosine_momentum",
]

#: Hyper-parameters every method accepts (methods add their own in ``defaults``).
COMMON_DEFAULTS: dict[str, Any] = {
    "grad_scale_power": 0.0,  # GradScale p (extended paper); 0 = standard training
    "cut_scope": "all",  # scope passed to cut_init
    "num_global_views": 2,
    "num_local_views": 0,
    "backbone_kwargs": {},  # extra keyword arguments for timm.create_model
    "momentum": None,  # EMA momentum of the teacher (momentum methods only)
    "sgd_momentum": 0.9,
    "nesterov": True,  # SGD/LARS Nesterov momentum (PAPER §9: on for BYOL and SimSiam)
}

#: Values of the ``momentum_schedule`` hyper-parameter of methods with an EMA teacher:
#: ``"cosine"`` raises the momentum from ``momentum`` to 1 (BYOL's and DINO's schedule),
#: ``"constant"`` keeps it at ``momentum`` (MoCo v2; the paper's BYOL runs use 0.99).
MOMENTUM_SCHEDULES: tuple[str, ...] = ("cosine", "constant")


@dataclass(frozen=True)
class ViewSpec:
    """The views one method trains on, as :func:`hub_cutinit.data.make_view_transform` builds.

    Attributes:
        num_global: global views per image (all of one shape).
        num_local: local views per image; ``0`` means the method takes no local crops.
        global_scale: ``RandomResizedCrop`` area range of the global views.
        local_scale: area range of the local views.
        local_size_fraction: side of a local view as a fraction of the image size (DINO's 96 px
            at 224 px is 3/7); rounded to a multiple of 8, at least 16.

    Example:
        >>> from hub_cutinit.methods.dino import DINO
        >>> DINO.view_spec({"num_local_views": 2})
        ViewSpec(num_global=2, num_local=2, global_scale=(0.4, 1.0), local_scale=(0.05, 0.4), local_size_fraction=0.42857142857142855)
    """

    num_global: int = 2
    num_local: int = 0
    global_scale: tuple[float, float] = (0.2, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    local_size_fraction: float = 3 / 7

    def __post_init__(self) -> None:
        if self.num_global < 1 or self.num_local < 0:
            raise ValueError(
                f"a view spec needs num_global >= 1 and num_local >= 0, got {self.num_global} "
                f"and {self.num_local}; check num_global_views / num_local_views."
            )
        for name in ("global_scale", "local_scale"):
            low, high = getattr(self, name)
            if not 0 < low <= high <= 1:
                raise ValueError(f"{name} must satisfy 0 < low <= high <= 1, got {(low, high)}.")
        if not 0 < self.local_size_fraction <= 1:
            raise ValueError(
                f"local_size_fraction must be in (0, 1], got {self.local_size_fraction}."
            )


@dataclass
class SSLOutput:
    """What one forward step returns.

    Attributes:
        loss: the scalar training loss.
        embeddings: raw (un-normalised) student embeddings of all views, concatenated along
            the batch dimension: ``"backbone"`` features, ``"projection"`` and, for methods
            with a predictor, ``"prediction"``. Detach before storing.
    """

    loss: torch.Tensor
    embeddings: dict[str, torch.Tensor] = field(default_factory=dict)


def cosine_momentum(base: float, progress: float, final: float = 1.0) -> float:
    """EMA momentum raised from ``base`` to ``final`` on a half cosine (BYOL, DINO).

    Example:
        >>> cosine_momentum(0.99, 0.0), cosine_momentum(0.99, 1.0)
        (0.99, 1.0)
    """
    progress = min(max(float(progress), 0.0), 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


class SSLModel(nn.Module):
    """A timm backbone with the heads, loss and (optionally) momentum teacher of one method.

    Subclasses set the class attributes and implement :meth:`build_heads` and
    :meth:`compute`. Create instances with :func:`hub_cutinit.create_ssl_model`, which applies
    the cut.

    Attributes:
        name: the registry name (``"byol"``).
        display_name: the name people write (``"BYOL"``), for model cards and the CLI.
        family: ``"contrastive"`` or ``"non-contrastive"``.
        defaults: the method's default hyper-parameters (a plain, JSON-serialisable dict).
        presets: named overrides of ``defaults``: ``"paper"`` (``{}``), ``"cpu"`` (heads small
            enough for CPU sweeps), ``"tiny"`` (test-size heads); read them with
            :func:`hub_cutinit.registry.get_preset`.
        teacher_parts: attribute names copied into the momentum teacher (empty: no teacher).
        head_names: attribute names of the SSL heads (the cut scopes "heads" and "last").
    """

    name: ClassVar[str] = ""
    display_name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    presets: ClassVar[dict[str, dict[str, Any]]] = {"paper": {}}
    teacher_parts: ClassVar[tuple[str, ...]] = ()
    head_names: ClassVar[tuple[str, ...]] = ()
    #: The momentum teacher is not cut directly: it is re-copied from the cut student.
    cut_init_skip_prefixes = ("teacher.",)

    def __init__(
        self, backbone: nn.Module, hparams: dict[str, Any], backbone_name: str | None = None
    ) -> None:
        super().__init__()
        num_features = getattr(backbone, "num_features", None)
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(
                f"The backbone {type(backbone).__name__} has no integer `num_features`; use a timm "
                "model created with num_classes=0, or set backbone.num_features to the size of "
                "its output features."
            )
        self.backbone = backbone
        self.backbone_name = backbone_name
        self.hparams = dict(hparams)
        self.validate_hparams()
        self.build_heads(num_features)
        self.teacher: nn.ModuleDict | None = None
        if self.teacher_parts:
            self.teacher = nn.ModuleDict(
                {part: copy.deepcopy(getattr(self, part)) for part in self.teacher_parts}
            )
            self.teacher.requires_grad_(False)

    @property
    def method(self) -> str:
        """The registry name of this model's method."""
        return self.name

    @property
    def cut_factor(self) -> float:
        """The cut factor applied (1.0 when never cut)."""
        return float(getattr(self, "cut_init_c", None) or 1.0)

    @classmethod
    def view_spec(cls, hparams: Mapping[str, Any] | None = None) -> ViewSpec:
        """The views this method trains on, from ``hparams`` over the class defaults.

        The default: ``num_global_views`` global views with crop scale (0.2, 1) and
        ``num_local_views`` local views. Override it to change crop scales or sizes.
        """
        hp = {**cls.defaults, **(hparams or {})}
        return ViewSpec(
            num_global=int(hp.get("num_global_views", 2)),
            num_local=int(hp.get("num_local_views", 0) or 0),
        )

    def validate_hparams(self) -> None:
        """Check ``self.hparams`` before the heads are built; raise ``ValueError`` naming the fix."""
        if not self.teacher_parts:
            return
        schedule = self.hparams.get("momentum_schedule", "cosine")
        if schedule not in MOMENTUM_SCHEDULES:
            raise ValueError(
                f"momentum_schedule must be one of {list(MOMENTUM_SCHEDULES)}, got {schedule!r}; "
                "'cosine' raises the EMA momentum to 1, 'constant' keeps it fixed."
            )
        momentum = self.hparams.get("momentum")
        if not isinstance(momentum, (int, float)) or not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"{self.name} needs an EMA momentum in [0, 1], got {momentum!r}.")

    # -- to implement -----------------------------------------------------------------------
    def build_heads(self, num_features: int) -> None:
        """Create the head modules from ``self.hparams``."""
        raise NotImplementedError

    def compute(
        self, global_views: list[torch.Tensor], local_views: list[torch.Tensor]
    ) -> SSLOutput:
        """Loss and embeddings of one step on validated views."""
        raise NotImplementedError

    # -- shared behaviour -------------------------------------------------------------------
    def head_modules(self) -> dict[str, nn.Module]:
        """The SSL heads (everything trainable except the backbone), by attribute name."""
        return {name: getattr(self, name) for name in self.head_names}

    def num_views(self) -> tuple[int, int]:
        """``(global views, local views)`` this method expects per image."""
        return int(self.hparams.get("num_global_views", 2)), int(
            self.hparams.get("num_local_views", 0)
        )

    def get_config(self) -> dict[str, Any]:
        """Everything :func:`hub_cutinit.create_ssl_model` needs to rebuild this model.

        ``overrides`` holds the hyper-parameters that differ from the method's defaults.
        """
        overrides = {k: v for k, v in self.hparams.items() if self.defaults.get(k, object()) != v}
        overrides.pop("c", None)
        return {
            "method": self.name,
            "backbone": self.backbone_name,
            "c": self.cut_factor,
            "overrides": overrides,
        }

    def after_cut_init(self) -> None:
        """Called by :func:`hub_cutinit.cut_init`: record c and re-copy the teacher."""
        self.hparams["c"] = self.cut_factor
        self.reset_teacher()

    @torch.no_grad()
    def reset_teacher(self) -> None:
        """Copy the student's weights and buffers into the momentum teacher."""
        if self.teacher is None:
            return
        for part in self.teacher_parts:
            self.teacher[part].load_state_dict(getattr(self, part).state_dict())

    def _teacher_pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        assert self.teacher is not None
        teacher, student = [], []
        for part in self.teacher_parts:
            teacher.extend(self.teacher[part].parameters())
            student.extend(getattr(self, part).parameters())
        return teacher, student

    def momentum_at(self, progress: float) -> float | None:
        """The EMA momentum at ``progress`` in [0, 1] (``None`` without a teacher).

        Example:
            >>> from hub_cutinit import create_ssl_model
            >>> from hub_cutinit.registry import get_preset
            >>> m = create_ssl_model("byol", "resnet18", momentum_schedule="constant",
            ...                      **get_preset("byol", "tiny"))
            >>> m.momentum_at(0.0), m.momentum_at(1.0)
            (0.99, 0.99)
        """
        if self.teacher is None:
            return None
        base = float(self.hparams["momentum"])
        if self.hparams.get("momentum_schedule", "cosine") == "constant":
            return base
        return cosine_momentum(base, progress)

    @torch.no_grad()
    def update_teacher(self, progress: float) -> float | None:
        """EMA update of the teacher with the momentum at ``progress`` in [0, 1].

        Returns the momentum used, or ``None`` for methods without a teacher. Call it only when
        gradients were synchronised (after an optimiser step). :meth:`on_step_end` calls it.
        """
        momentum = self.momentum_at(progress)
        if momentum is None:
            return None
        teacher, student = self._teacher_pairs()
        torch._foreach_lerp_(teacher, [s.detach() for s in student], 1.0 - momentum)
        return momentum

    def on_step_end(self, progress: float) -> dict[str, float]:
        """The method's work after every optimiser step; returns values worth logging.

        ``progress`` is ``step / total_steps`` in [0, 1]. The default updates the EMA teacher
        (if any) and returns ``{"ema_momentum": m}``; subclasses add their own schedules with
        ``{**super().on_step_end(progress), ...}``.
        """
        momentum = self.update_teacher(progress)
        return {} if momentum is None else {"ema_momentum": float(momentum)}

    def embed(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The student's embeddings of one image batch, without a loss and without side effects.

        Returns ``{"backbone", "projection"}`` and ``"prediction"`` for methods with a
        predictor: the same raw embeddings :class:`SSLOutput` carries. The MoCo queue, the DINO
        centre and the teacher are left alone; BatchNorm follows the module's train/eval mode
        (wrap the call in ``torch.no_grad()`` when only monitoring). The default uses the
        ``projector`` and ``predictor`` attributes; methods with other heads override it.

        Example:
            >>> import torch
            >>> from hub_cutinit import create_ssl_model
            >>> from hub_cutinit.registry import get_preset
            >>> m = create_ssl_model("simsiam", "resnet18", **get_preset("simsiam", "tiny"))
            >>> {k: tuple(v.shape) for k, v in m.eval().embed(torch.randn(2, 3, 32, 32)).items()}
            {'backbone': (2, 512), 'projection': (2, 16), 'prediction': (2, 16)}
        """
        out = {"backbone": self.backbone(images)}
        projector = getattr(self, "projector", None)
        if projector is None:
            raise NotImplementedError(
                f"{type(self).__name__} has no `projector`; override embed() to return its "
                "embeddings."
            )
        out["projection"] = projector(out["backbone"])
        predictor = getattr(self, "predictor", None)
        if predictor is not None:
            out["prediction"] = predictor(out["projection"])
        return out

    def _split_views(
        self, views: Sequence[torch.Tensor] | torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if isinstance(views, torch.Tensor):
            views = list(views.unbind(0)) if views.ndim == 5 else [views]
        views = list(views)
        n_global, n_local = self.num_views()
        if len(views) < n_global or (n_local == 0 and len(views) != n_global):
            raise ValueError(
                f"{self.name} expects {n_global} global views"
                + (f" and up to {n_local} local views" if n_local else "")
                + f" per step, got {len(views)}; build them with "
                "hub_cutinit.data.make_view_transform."
            )
        for i, view in enumerate(views):
            if not isinstance(view, torch.Tensor) or view.ndim != 4:
                raise ValueError(
                    f"view {i} must be an image batch tensor (N, C, H, W), got "
                    f"{getattr(view, 'shape', type(view).__name__)}."
                )
        first = views[0]
        for i, view in enumerate(views[1:], start=1):
            same_batch = view.shape[:2] == first.shape[:2]
            if not same_batch or (i < n_global and view.shape != first.shape):
                raise ValueError(
                    f"views of mismatched shapes: view 0 is {tuple(first.shape)}, view {i} is "
                    f"{tuple(view.shape)}; global views need one shape and every view the same "
                    "batch size and channels."
                )
        if self.training and first.shape[0] < 2:
            raise ValueError("Training needs a batch of at least 2 images per process.")
        return views[:n_global], views[n_global:]

    def forward(self, views: Sequence[torch.Tensor] | torch.Tensor) -> SSLOutput:
        """One step: ``views`` is a list of image batches (global views first)."""
        global_views, local_views = self._split_views(views)
        return self.compute(global_views, local_views)

    def _grad_scale(self, z: torch.Tensor) -> torch.Tensor:
        """Apply GradScale (extended paper) with ``hparams["grad_scale_power"]`` if non-zero."""
        power = float(self.hparams.get("grad_scale_power", 0.0) or 0.0)
        if power == 0.0:
            return z
        from hub_cutinit.theory import grad_scale

        return grad_scale(z, power)

    def encode(self, module: nn.Module, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """Run ``module`` on same-shape views in one batch and split the output per view."""
        return list(module(torch.cat(views)).chunk(len(views)))

"""The base class of every SSL method: one step API for the trainer and the norm tracker.

A method subclass builds its heads in :meth:`SSLModel.build_heads` and computes its loss in
:meth:`SSLModel.compute`. Everything else — view validation, GradScale, the momentum teacher,
the record of the cut, the config that rebuilds the model, the checks on a run
(:meth:`SSLModel.check_run` with a :class:`RunSpec`) — lives here.

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
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

__all__ = [
    "COMMON_DEFAULTS",
    "MOMENTUM_SCHEDULES",
    "RunSpec",
    "SSLModel",
    "SSLOutput",
    "ViewSpec",
    "cosine_momentum",
]

#: Hyper-parameters every method accepts (methods add their own in ``defaults``).
COMMON_DEFAULTS: dict[str, Any] = {
    "grad_scale_power": 0.0,  # GradScale p (extended paper); 0 = standard training
    "cut_scope": "all",  # scope passed to cut_init
    "cut_spare": [],  # kinds of parameters cut_init leaves untouched (e.g. ["bias"])
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


@dataclass(frozen=True)
class RunSpec:
    """What a training run is about to do, as :meth:`SSLModel.check_run` sees it.

    Attributes:
        c: the run's cut factor.
        mixed_precision: ``"fp16"``, ``"bf16"``, ``"no"`` or ``None`` (full precision).
        global_batch_size: images per optimiser step over all processes and accumulation
            steps; ``None`` when not known yet (at flag-parsing time).
        device_type: ``"cuda"``, ``"cpu"``, … or ``None`` when not known yet.
        hparams: the method's hyper-parameters for the run, in full or only the overrides;
            methods read them over their class defaults (:meth:`SSLModel.run_hparams`).

    Example:
        >>> run = RunSpec(c=9.0, mixed_precision="bf16")
        >>> run.global_batch_size is None, dict(run.hparams)
        (True, {})
    """

    c: float
    mixed_precision: str | None = None
    global_batch_size: int | None = None
    device_type: str | None = None
    hparams: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        batch = self.global_batch_size
        if batch is not None and (
            isinstance(batch, bool) or not isinstance(batch, int) or batch < 1
        ):
            raise ValueError(
                f"global_batch_size must be an int >= 1 or None (not known yet), got {batch!r}."
            )


def _scale_by_norm(z: torch.Tensor, power: float, grad: torch.Tensor) -> torch.Tensor:
    """GradScale's backward (:func:`hub_cutinit.theory.grad_scale`): ``grad`` × ``‖z‖^p`` by row."""
    norm = torch.linalg.vector_norm(z, dim=-1, keepdim=True)
    if power < 0:
        norm = norm.clamp_min(torch.finfo(norm.dtype).tiny)
    return grad * norm.pow(power).to(grad.dtype)


class _GradScaleHook:
    """Forward hook putting GradScale on a module's output: the gradient reaching it × ``‖z‖^p``.

    The output tensor itself is returned unchanged (the forward is the identity and the
    embeddings a method reports are that very tensor, so their ``.grad`` is the scaled one).
    It holds only ``p``, never the model, so copying the head alone stays cheap.
    """

    def __init__(self, power: float) -> None:
        self.power = float(power)

    def __call__(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if not isinstance(output, torch.Tensor) or output.ndim < 1:
            raise ValueError(
                f"GradScale needs an embedding tensor from {type(module).__name__}, got "
                f"{type(output).__name__}; point the method's grad_scale_at at the submodule "
                "whose output embedding enters the loss."
            )
        if output.requires_grad:
            output.register_hook(functools.partial(_scale_by_norm, output.detach(), self.power))


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

    Create instances with :func:`hub_cutinit.create_ssl_model`, which applies the cut.

    The method contract — what a subclass provides:

    * the class attributes below, checked by :func:`hub_cutinit.register_method`; ``presets``
      must include ``"tiny"`` (test-size heads: the test suite runs every registered method
      with it and fails naming a method without one);
    * :meth:`build_heads` (the head modules) and :meth:`compute` (loss and embeddings of one
      step, on views :meth:`forward` has validated);
    * optionally :meth:`check_run`, the method's checks on a run (:class:`RunSpec`): it raises
      ``ValueError`` naming the fix for a run that cannot work and returns warnings for one
      that works but is questionable (DINO refuses fp16 at c >= 9, MoCo warns when its queue
      is short for the global batch); the training config calls it before the run, the
      trainer again once the global batch is known.

    GradScale (``grad_scale_power`` p, extended paper) is applied by this class, not by the
    methods: after :meth:`build_heads` it registers a forward hook on the submodule named by
    :attr:`grad_scale_at` (by default ``predictor`` when the model has one, else
    ``projector``) that multiplies every gradient reaching that module's output, row by row,
    by ``‖z‖^p`` — the backward of :func:`hub_cutinit.theory.grad_scale`, with the same
    numbers, while the forward and the output tensor are untouched (so the ``.grad`` of the
    embedding a method reports is the scaled one). ``compute`` just calls its heads and must
    not scale again. With p = 0 no hook is registered. Point ``grad_scale_at`` at the
    raw (un-normalised) embedding that enters the loss; ``None`` declares that the method has
    none and refuses p != 0. p is read when the model is built.

    Attributes:
        name: the registry name (``"byol"``).
        display_name: the name people write (``"BYOL"``), for model cards and the CLI.
        family: a lowercase identifier such as ``"contrastive"``, ``"non-contrastive"``,
            ``"redundancy-reduction"`` or ``"clustering"`` (see
            :data:`hub_cutinit.registry.KNOWN_FAMILIES`; others are allowed).
        defaults: the method's default hyper-parameters (a plain, JSON-serialisable dict).
        presets: named overrides of ``defaults``: ``"paper"`` (``{}``), ``"cpu"`` (heads small
            enough for CPU sweeps), ``"tiny"`` (test-size heads); read them with
            :func:`hub_cutinit.registry.get_preset`.
        teacher_parts: attribute names copied into the momentum teacher (empty: no teacher).
        head_names: attribute names of the SSL heads (the cut scopes "heads" and "last").
        grad_scale_at: dotted path of the submodule whose output carries GradScale; ``""``
            (the default) picks ``predictor`` or ``projector``; ``None``: no GradScale.

    Example:
        >>> import torch
        >>> from hub_cutinit import create_ssl_model
        >>> from hub_cutinit.registry import get_preset
        >>> m = create_ssl_model("simclr", "test_resnet", grad_scale_power=1.0,
        ...                      **get_preset("simclr", "tiny"))
        >>> m.grad_scale_module() is m.projector
        True
    """

    name: ClassVar[str] = ""
    display_name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    #: the cut factor the paper recommends for this method (``--c paper``); ``None``: none
    paper_c: ClassVar[float | None] = None
    defaults: ClassVar[dict[str, Any]] = {}
    presets: ClassVar[dict[str, dict[str, Any]]] = {"paper": {}}
    teacher_parts: ClassVar[tuple[str, ...]] = ()
    head_names: ClassVar[tuple[str, ...]] = ()
    grad_scale_at: ClassVar[str | None] = ""
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
        self._install_grad_scale()  # after the teacher copy: the teacher's heads stay plain

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

    @classmethod
    def run_hparams(cls, run: RunSpec) -> dict[str, Any]:
        """The run's hyper-parameters over the class defaults.

        Example:
            >>> from hub_cutinit.methods.moco import MoCo
            >>> MoCo.run_hparams(RunSpec(c=3.0, hparams={"queue_size": 64}))["queue_size"]
            64
        """
        return {**cls.defaults, **run.hparams}

    @classmethod
    def check_run(cls, run: RunSpec) -> list[str]:
        """The method's checks on a run: raise ``ValueError`` naming the fix for a run that
        cannot work; return warnings (messages, not emitted) for one that is questionable.

        Called before the run (``global_batch_size=None``) and again once the global batch is
        known; a check that needs a field still ``None`` skips. The base has no checks.

        Example:
            >>> SSLModel.check_run(RunSpec(c=9.0, mixed_precision="fp16"))
            []
        """
        return []

    def grad_scale_module(self) -> nn.Module | None:
        """The submodule whose output carries GradScale (:attr:`grad_scale_at`), or ``None``."""
        path = self.grad_scale_at
        if path is None:
            return None
        if path == "":
            found = [
                n
                for n in ("predictor", "projector")
                if isinstance(getattr(self, n, None), nn.Module)
            ]
            if not found:
                raise ValueError(
                    f"{type(self).__name__} has neither a `predictor` nor a `projector`: set its "
                    "class attribute grad_scale_at to the submodule whose output embedding "
                    "enters the loss (e.g. 'head.mlp'), or to None if GradScale does not apply."
                )
            path = found[0]
        try:
            return self.get_submodule(path)
        except AttributeError as err:
            raise ValueError(
                f"{type(self).__name__}.grad_scale_at = {path!r} names no submodule; set it to "
                "the submodule whose output embedding enters the loss."
            ) from err

    def _install_grad_scale(self) -> None:
        module = self.grad_scale_module()
        power = float(self.hparams.get("grad_scale_power", 0.0) or 0.0)
        if not math.isfinite(power):
            raise ValueError(f"grad_scale_power must be a finite number, got {power}.")
        if power == 0.0:
            return
        if module is None:
            raise ValueError(
                f"{self.name} does not support GradScale (grad_scale_at is None); "
                "leave grad_scale_power at 0."
            )
        module.register_forward_hook(_GradScaleHook(power))

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
        teacher: list[torch.Tensor] = []
        student: list[torch.Tensor] = []
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
        # no public foreach lerp in torch>=2.1 (swa_utils' EMA helper, 2.2+, calls this one)
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
        """One step: ``views`` is a list of image batches (global views first).

        Validates the views and passes them to :meth:`compute`; GradScale is already wired
        into the student's embedding (see the class docstring).
        """
        global_views, local_views = self._split_views(views)
        return self.compute(global_views, local_views)

    def encode(self, module: nn.Module, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """Run ``module`` on same-shape views in one batch and split the output per view."""
        return list(module(torch.cat(views)).chunk(len(views)))

"""Cut-initialisation: divide a network's parameters by a constant ``c`` at initialisation.

The paper's reference implementation divides every floating-point parameter of the model
(convolution and linear weights, biases, normalisation affine weights and biases) by ``c`` and
leaves buffers such as BatchNorm running statistics alone. :func:`cut_init` does exactly that
for ``scope="all"`` and offers narrower scopes for experiments.

Example:
    >>> import torch.nn as nn
    >>> from hub_cutinit import cut_init
    >>> layer = nn.Linear(4, 2)
    >>> w = layer.weight.detach().clone()
    >>> _ = cut_init(layer, c=3)
    >>> bool(((layer.weight * 3 - w).abs() < 1e-6).all()), layer.cut_init_c
    (True, 3.0)

Parametrisations: a tensor registered with ``torch.nn.utils.parametrize`` (for example
``torch.nn.utils.parametrizations.weight_norm``) is cut through its effective value: the new
effective weight ``W / c`` is assigned back, which calls the parametrisation's
``right_inverse``. A module can declare magnitudes that are fixed by design and must stay
untouched by listing their parameter names (relative to the module) in a class or instance
attribute ``cut_init_fixed``; DINO's weight-normalised last layer lists its frozen magnitude
``parametrizations.weight.original0`` (and the effective weight ``weight``) this way, so its norm
stays exactly 1.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["CUT_SCOPES", "SPARE_KINDS", "cut_init", "cut_targets", "get_cut_factor", "validate_c"]

CUT_SCOPES = ("all", "heads", "last")
#: Kinds of parameters a cut can leave untouched (``spare=``): the biases of convolution and
#: linear layers (``"bias"``), and the shift (``"norm_shift"``) and scale (``"norm_scale"``) of
#: normalisation layers (BatchNorm, LayerNorm, GroupNorm, InstanceNorm).
SPARE_KINDS = ("bias", "norm_shift", "norm_scale")
_NORMS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)

#: Attribute on the model recording the product of the factors applied.
CUT_ATTRIBUTE = "cut_init_c"


def get_cut_factor(model: nn.Module) -> float:
    """Return the cut factor recorded on ``model`` (1.0 if it was never cut).

    Example:
        >>> import torch.nn as nn
        >>> get_cut_factor(nn.Linear(2, 2))
        1.0
    """
    value = getattr(model, CUT_ATTRIBUTE, None)
    return 1.0 if value is None else float(value)


def validate_c(c: object) -> float:
    """Return ``c`` as a float, or raise a ValueError if it is not a finite number > 0."""
    if isinstance(c, bool) or not isinstance(c, (int, float)):
        raise ValueError(f"c must be a finite number > 0 (e.g. c=3 or c=9), got {c!r}.")
    c = float(c)
    if not math.isfinite(c) or c <= 0:
        raise ValueError(
            f"c must be a finite number > 0, got {c}. Use c=3 for contrastive methods, c=9 for "
            "non-contrastive ones, or c=1 for no cut."
        )
    return c


def _as_patterns(patterns: str | Sequence[str] | None, name: str) -> list[str]:
    if patterns is None:
        return []
    if isinstance(patterns, str):
        return [patterns]
    patterns = list(patterns)
    if not all(isinstance(p, str) for p in patterns):
        raise ValueError(
            f"{name} must be a glob string or a list of glob strings, got {patterns!r}."
        )
    return patterns


def _fixed_names(model: nn.Module) -> set[str]:
    """Full names of tensors whose magnitude a module declares fixed (``cut_init_fixed``)."""
    fixed: set[str] = set()
    for module_name, module in model.named_modules():
        for rel in getattr(module, "cut_init_fixed", ()) or ():
            fixed.add(f"{module_name}.{rel}" if module_name else rel)
    return fixed


def _effective_name(name: str) -> str:
    """``a.parametrizations.weight.original0`` → ``a.weight``; other names unchanged."""
    owner, sep, rest = name.rpartition("parametrizations.")
    if not sep or (owner and not owner.endswith(".")):
        return name
    return owner + rest.split(".")[0]


def _scope_prefixes(model: nn.Module, scope: str, fixed: set[str]) -> list[str] | None:
    """Parameter-name prefixes selected by ``scope``; ``None`` means the whole model."""
    if scope == "all":
        return None
    heads = getattr(model, "head_modules", None)
    if not callable(heads):
        raise ValueError(
            f"scope={scope!r} needs an SSL model with heads (create one with "
            "hub_cutinit.create_ssl_model); for a plain model use scope='all' with include/exclude "
            "patterns."
        )
    head_modules: dict[str, nn.Module] = heads()
    module_names = {id(m): n for n, m in model.named_modules()}
    prefixes = []
    for head in head_modules.values():
        head_name = module_names[id(head)]
        if scope == "heads":
            prefixes.append(head_name + ".")
        else:  # "last": the last linear layer of each head whose weight is not fixed by design
            linears = [
                f"{head_name}.{n}."
                for n, m in head.named_modules()
                if isinstance(m, nn.Linear) and f"{head_name}.{n}.weight" not in fixed
            ]
            if linears:
                prefixes.append(linears[-1])
    return prefixes


def _kind(model: nn.Module, name: str) -> str:
    """``"bias"``, ``"norm_shift"``, ``"norm_scale"`` or ``"weight"`` (everything else)."""
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    if isinstance(module, _NORMS):
        return {"bias": "norm_shift", "weight": "norm_scale"}.get(attr, "weight")
    return "bias" if attr == "bias" else "weight"


def _check_spare(spare: Sequence[str]) -> tuple[str, ...]:
    unknown = sorted(set(spare) - set(SPARE_KINDS))
    if isinstance(spare, str) or unknown:
        raise ValueError(
            f"spare must be a list of {list(SPARE_KINDS)}, got {spare!r}; e.g. spare=['bias'] "
            "leaves the biases of linear and convolution layers uncut."
        )
    return tuple(spare)


def cut_targets(
    model: nn.Module,
    *,
    scope: str = "all",
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    spare: Sequence[str] = (),
) -> list[str]:
    """Names of the tensors :func:`cut_init` would divide, without changing anything.

    Names are those of ``model.named_parameters()``, except that a parametrised tensor is named
    by its effective attribute (``layer.weight`` rather than ``layer.parametrizations.weight.*``).

    Example:
        >>> import torch.nn as nn
        >>> cut_targets(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), exclude="1.*")
        ['0.weight', '0.bias']
        >>> cut_targets(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), spare=["bias"])
        ['0.weight', '1.weight', '1.bias']
    """
    spared = _check_spare(spare)
    if scope not in CUT_SCOPES:
        raise ValueError(f"Unknown scope {scope!r}; use one of {CUT_SCOPES}.")
    includes, excludes = _as_patterns(include, "include"), _as_patterns(exclude, "exclude")
    skip_prefixes = tuple(getattr(model, "cut_init_skip_prefixes", ()) or ())
    fixed = _fixed_names(model)
    # A parametrised tensor is cut through its effective value, unless one of its originals is
    # fixed by design: then the whole tensor is left alone (its fixed part sets its scale).
    fixed |= {_effective_name(n) for n in fixed}
    prefixes = _scope_prefixes(model, scope, fixed)

    floating = [n for n, p in model.named_parameters() if p.is_floating_point()]
    if not floating:
        raise ValueError(
            "The model has no floating-point parameters to cut; pass the network itself (not a "
            "quantised or parameter-free module)."
        )

    candidates: list[str] = []
    seen: set[str] = set()
    for name in floating:
        name = _effective_name(name)
        if name in seen or name in fixed:
            continue
        seen.add(name)
        candidates.append(name)

    def selected(name: str) -> bool:
        if skip_prefixes and name.startswith(skip_prefixes):
            return False
        if prefixes is not None and not any(name.startswith(p) for p in prefixes):
            return False
        if includes and not any(fnmatch.fnmatchcase(name, p) for p in includes):
            return False
        if spared and _kind(model, name) in spared:
            return False
        return not any(fnmatch.fnmatchcase(name, p) for p in excludes)

    targets = [n for n in candidates if selected(n)]
    if not targets:
        detail = (
            f"scope={scope!r}, include={includes or None}, exclude={excludes or None}, "
            f"spare={list(spared) or None}"
        )
        raise ValueError(
            f"cut_init matched no parameter ({detail}). Check the patterns against "
            f"model.named_parameters(), e.g. {candidates[:3]}."
        )
    return targets


def _resolve(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module_name, _, attr = name.rpartition(".")
    return (model.get_submodule(module_name) if module_name else model), attr


#: Elements per pass of :func:`_check_representable` (its scratch buffers: 4 MiB + 2 MiB).
_CHECK_CHUNK = 1 << 20


@torch.no_grad()
def _unrepresentable(
    tensor: torch.Tensor, c: float, scratch: dict[tuple, tuple[torch.Tensor, ...]]
) -> torch.Tensor:
    """0-d bool tensor: would ``tensor / c`` overflow, or turn a non-zero value subnormal or 0?

    One reduction over the tensor plus, for ``c > 1``, one pass in chunks of
    :data:`_CHECK_CHUNK` elements through ``scratch`` buffers reused across chunks and tensors:
    no copy of any parameter, no allocation that grows with the model.
    """
    info = torch.finfo(tensor.dtype)
    flat = tensor.detach().reshape(-1)
    if c > info.max or 1 / c > info.max:  # c itself does not fit the dtype
        return (flat.abs() > 0).any()
    lo, hi = torch.aminmax(flat)
    bad = torch.maximum(hi.abs(), lo.abs()) / c > info.max
    if c > 1:  # values shrink: a non-zero one must stay normal
        limit = info.smallest_normal * c
        key = (flat.dtype, flat.device)
        if key not in scratch:
            size = _CHECK_CHUNK
            scratch[key] = (
                torch.empty(size, dtype=flat.dtype, device=flat.device),
                torch.empty(size, dtype=torch.bool, device=flat.device),
                torch.empty(size, dtype=torch.bool, device=flat.device),
            )
        magnitude, positive, small = scratch[key]
        for chunk in flat.split(_CHECK_CHUNK):
            n = chunk.numel()
            torch.abs(chunk, out=magnitude[:n])
            torch.gt(magnitude[:n], 0, out=positive[:n])
            torch.lt(magnitude[:n], limit, out=small[:n])
            positive[:n] &= small[:n]
            bad |= positive[:n].any()
    return bad


@torch.no_grad()
def _check_representable(model: nn.Module, targets: Sequence[str], c: float) -> None:
    """Refuse a c whose division overflows a parameter or flushes a non-zero one to zero.

    Linear in the parameter count, no copy of any parameter, one host synchronisation.
    """
    if c == 1.0:
        return
    tensors = [getattr(*_resolve(model, name)) for name in targets]
    scratch: dict[tuple, tuple[torch.Tensor, ...]] = {}
    flags = [_unrepresentable(t, c, scratch) for t in tensors if t.numel()]
    if not flags or not bool(torch.stack([f.to(flags[0].device) for f in flags]).any()):
        return
    for name, tensor in zip(targets, tensors, strict=True):
        if not tensor.numel() or not bool(_unrepresentable(tensor, c, scratch)):
            continue
        magnitude = tensor.detach().abs()  # the error path only: report the range
        nonzero = magnitude[magnitude > 0]
        largest, smallest = float(nonzero.max()), float(nonzero.min())
        raise ValueError(
            f"c={c:g} does not fit {tensor.dtype}: dividing {name} (|values| in "
            f"[{smallest:.3g}, {largest:.3g}]) would overflow or flush values to zero. Use a "
            "moderate c such as 3 or 9."
        )


@torch.no_grad()
def cut_init(
    model: nn.Module,
    c: float = 3,
    *,
    scope: str = "all",
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    spare: Sequence[str] = (),
    force: bool = False,
) -> nn.Module:
    """Divide the model's floating-point parameters by ``c`` in place and record ``c``.

    Args:
        model: any ``nn.Module`` (timm, torchvision, transformers, or an SSL model).
        c: the cut factor, a finite number > 0; ``c=1`` changes nothing but is recorded.
        scope: ``"all"`` (every parameter, the paper's reference), ``"heads"`` (only the SSL
            heads of a model from :func:`hub_cutinit.create_ssl_model`) or ``"last"`` (the last
            linear layer of each head).
        include: glob patterns (``fnmatch``) on parameter names; if given, only matches are cut.
        exclude: glob patterns of parameter names to leave untouched.
        spare: kinds of parameters to leave untouched, from :data:`SPARE_KINDS`: ``["bias"]``
            is the bias-sparing cut (a stack of k cut layers shrinks ``W·x`` by ``c⁻ᵏ`` but a
            cut bias only by ``c⁻¹``, so at init the paper's cut makes the output mostly the
            same bias vector for every input); add ``"norm_shift"`` to spare BN/LN shifts too.
        force: allow cutting a model that was already cut; the recorded factor multiplies.

    Returns:
        The same model, with ``model.cut_init_c`` set.

    Buffers (BatchNorm running statistics, DINO's center) are never changed. An SSL model's
    momentum teacher is skipped and re-copied from the cut student afterwards.

    Example:
        >>> import timm
        >>> net = cut_init(timm.create_model("resnet18", num_classes=0), c=3)
        >>> net.cut_init_c
        3.0
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"cut_init expects an nn.Module, got {type(model).__name__}.")
    c = validate_c(c)
    previous = getattr(model, CUT_ATTRIBUTE, None)
    if previous is not None and not force:
        raise ValueError(
            f"This model was already cut-initialised with c={previous}. Cutting twice compounds "
            "the factor; pass force=True if that is what you want."
        )
    targets = cut_targets(model, scope=scope, include=include, exclude=exclude, spare=spare)
    _check_representable(model, targets, c)

    if c != 1.0:
        for name in targets:
            module, attr = _resolve(model, name)
            if parametrize.is_parametrized(module, attr):
                setattr(module, attr, getattr(module, attr) / c)
            else:
                getattr(module, attr).div_(c)

    setattr(model, CUT_ATTRIBUTE, (previous or 1.0) * c if force else c)
    after = getattr(model, "after_cut_init", None)
    if callable(after):
        after()
    return model

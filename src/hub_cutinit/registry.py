"""The method registry: a leaf that maps names to SSL method classes.

Like timm's ``_registry.py``, this module imports nothing of the methods, of the cut or of
torch: each method module does ``@register_method`` on its class, the package
``hub_cutinit/__init__.py`` imports :mod:`hub_cutinit.methods` (so the built-ins are registered
before anyone asks), and :mod:`hub_cutinit.factory` builds models from what the registry holds.

Example:
    >>> from hub_cutinit.registry import get_method_defaults, get_preset, list_methods
    >>> list_methods()
    ['barlow_twins', 'byol', 'dino', 'moco', 'mocov3', 'simclr', 'simsiam', 'vicreg']
    >>> get_method_defaults("byol")["c"]
    9.0
    >>> get_preset("moco", "cpu")
    {'proj_hidden_dim': 512, 'queue_size': 1024}
    >>> get_display_name("simsiam"), get_display_name("not-registered")
    ('SimSiam', 'not-registered')
    >>> from hub_cutinit.methods.base import RunSpec
    >>> [m[:25] for m in check_run("moco", RunSpec(c=3.0, global_batch_size=2048))]
    ["MoCo's queue (4,096 keys)"]
"""

from __future__ import annotations

import copy
import difflib
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hub_cutinit.methods.base import RunSpec, SSLModel

__all__ = [
    "KNOWN_FAMILIES",
    "check_run",
    "register_method",
    "unregister_method",
    "list_methods",
    "get_method_class",
    "get_method_defaults",
    "get_display_name",
    "get_preset",
    "paper_c",
]

_METHODS: dict[str, type[SSLModel]] = {}
_REQUIRED_DEFAULTS = frozenset({"c", "weight_decay", "optimizer", "base_lr"})

#: Families with a name already (the paper's c: 3 contrastive, 9 non-contrastive). ``family`` is
#: open: any lowercase identifier (letters, digits, ``-`` or ``_``, starting with a letter).
KNOWN_FAMILIES: tuple[str, ...] = (
    "contrastive",
    "non-contrastive",
    "redundancy-reduction",
    "clustering",
)
_FAMILY_RULE = re.compile(r"[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*")


def _check_family(cls: type) -> None:
    family = getattr(cls, "family", None)
    if not isinstance(family, str) or not _FAMILY_RULE.fullmatch(family):
        raise ValueError(
            f"{cls.__name__}.family must be a non-empty lowercase identifier (letters, digits, "
            f"'-' or '_', starting with a letter), e.g. one of {list(KNOWN_FAMILIES)}; got "
            f"{family!r}."
        )


def register_method(cls: type[SSLModel]) -> type[SSLModel]:
    """Class decorator adding an :class:`~hub_cutinit.methods.base.SSLModel` to the registry.

    The class must define ``name``, ``family`` (a lowercase identifier, see
    :data:`KNOWN_FAMILIES`) and ``defaults`` (with at least ``c``, ``weight_decay``,
    ``optimizer`` and ``base_lr``); its ``presets`` must be dicts of known hyper-parameters.
    A ``"tiny"`` preset is expected (the test suite runs every registered method with it) but
    not enforced here: the tests fail naming a method without one.

    Example:
        >>> from hub_cutinit.methods.simclr import SimCLR
        >>> @register_method
        ... class MySimCLR(SimCLR):
        ...     name = "my-simclr"
        >>> "my-simclr" in list_methods()
        True
        >>> _ = unregister_method("my-simclr")
    """
    name = getattr(cls, "name", "")
    if not name or not isinstance(name, str):
        raise ValueError(f"{cls.__name__} needs a non-empty string class attribute `name`.")
    _check_family(cls)
    defaults = getattr(cls, "defaults", None) or {}
    missing = _REQUIRED_DEFAULTS - set(defaults)
    if missing:
        raise ValueError(f"{cls.__name__}.defaults lacks {sorted(missing)}.")
    for preset, values in (getattr(cls, "presets", None) or {}).items():
        unknown = sorted(set(values) - set(defaults))
        if unknown:
            raise ValueError(
                f"{cls.__name__}.presets[{preset!r}] sets {unknown}, which are not in "
                f"{cls.__name__}.defaults; add them to defaults or drop them from the preset."
            )
    if name in _METHODS and _METHODS[name] is not cls:
        raise ValueError(
            f"A method named {name!r} is already registered ({_METHODS[name].__name__}); "
            "pick another name or unregister_method() the old one first."
        )
    _METHODS[name] = cls
    return cls


def unregister_method(name: str) -> type[SSLModel]:
    """Remove a method from the registry and return its class.

    Example:
        >>> from hub_cutinit.methods.simclr import SimCLR
        >>> _ = register_method(type("Tmp", (SimCLR,), {"name": "tmp"}))
        >>> unregister_method("tmp").__name__, "tmp" in list_methods()
        ('Tmp', False)
    """
    if name not in _METHODS:
        raise ValueError(f"No method named {name!r} is registered; known: {sorted(_METHODS)}.")
    return _METHODS.pop(name)


def list_methods() -> list[str]:
    """Names of the registered methods, sorted."""
    return sorted(_METHODS)


def get_method_class(method: str) -> type[SSLModel]:
    """The :class:`SSLModel` subclass registered as ``method``.

    Example:
        >>> get_method_class("dino").display_name
        'DINO'
    """
    if method not in _METHODS:
        close = difflib.get_close_matches(str(method), list(_METHODS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"Unknown method {method!r}; known methods: {sorted(_METHODS)}.{hint} A method of "
            "your own must be registered with @hub_cutinit.register_method before use."
        )
    return _METHODS[method]


def check_run(method: str, run: RunSpec) -> list[str]:
    """The registered method's checks on a run (:meth:`SSLModel.check_run`).

    Raises ``ValueError`` naming the fix for a run that cannot work; returns the warnings (not
    emitted: the caller logs or ``warnings.warn``-s them) for one that is questionable.

    Example:
        >>> from hub_cutinit.methods.base import RunSpec
        >>> check_run("simclr", RunSpec(c=3.0, mixed_precision="fp16", global_batch_size=512))
        []
    """
    return list(get_method_class(method).check_run(run))


def get_method_defaults(method: str) -> dict[str, Any]:
    """A copy of the method's default hyper-parameters, with its ``family``.

    Example:
        >>> d = get_method_defaults("simclr")
        >>> d["family"], d["c"], d["temperature"]
        ('contrastive', 3.0, 0.5)
    """
    cls = get_method_class(method)
    return {"family": cls.family, **copy.deepcopy(cls.defaults)}


def paper_c(method: str) -> float:
    """The paper's cut factor for ``method`` (``--c paper``): 3 contrastive, 9 non-contrastive.

    Example:
        >>> paper_c("simclr"), paper_c("byol")
        (3.0, 9.0)
    """
    value = getattr(get_method_class(method), "paper_c", None)
    if value is None:
        raise ValueError(
            f"The paper gives no cut factor for {method} (family "
            f"{get_method_class(method).family}); pass a number, e.g. --c 3."
        )
    return float(value)


def get_display_name(method: str) -> str:
    """The method's human-readable name (``"SimCLR"``); the raw name when not registered.

    A model card may be rendered from a ``config.json`` alone, for a method this process has
    not registered, hence the fallback instead of an error.
    """
    cls = _METHODS.get(method)
    return (getattr(cls, "display_name", "") or method) if cls is not None else str(method)


def get_preset(method: str, preset: str) -> dict[str, Any]:
    """A copy of one of the method's named hyper-parameter presets.

    Every method has ``"paper"`` (its defaults, so ``{}``); the built-ins also have ``"cpu"``
    (the small heads of the sweep and demo) and ``"tiny"`` (test-size heads). Pass the result
    as overrides: ``create_ssl_model(method, backbone, **get_preset(method, "cpu"))``.

    Example:
        >>> get_preset("byol", "tiny")
        {'proj_hidden_dim': 32, 'proj_dim': 16, 'pred_hidden_dim': 8}
        >>> get_preset("simclr", "paper")
        {}
        >>> get_preset("simclr", "huge")
        Traceback (most recent call last):
        ...
        ValueError: Unknown preset 'huge' for method 'simclr'; valid presets: ['cpu', 'paper', 'tiny'].
    """
    cls = get_method_class(method)
    presets = {"paper": {}, **(getattr(cls, "presets", None) or {})}
    if preset not in presets:
        raise ValueError(
            f"Unknown preset {preset!r} for method {method!r}; valid presets: {sorted(presets)}."
        )
    return copy.deepcopy(dict(presets[preset]))

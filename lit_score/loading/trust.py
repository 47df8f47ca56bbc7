"""Loading checkpoints without running what they name: the allow-list and reader every command uses.

A checkpoint is data. Lightning rebuilds a model from the ``class_path`` / ``init_args`` trees in its hyper-parameters,
and jsonargparse imports and *calls* whatever those trees name (an optimizer argument typed ``OptimizerCallable``
accepts a plain function, so ``torch.os.system`` with ``init_args: {command: …}`` ran a shell command). So before
anything of a checkpoint is built, every name in it passes :func:`resolve_class`:

=====  ======================================================================================================
step   what is checked (in this order; a refusal stops before the next step)
=====  ======================================================================================================
1      the file reads with ``torch.load(weights_only=True)``: tensors and plain types, no pickled objects
2      ``_instantiator`` is absent or Lightning's own ``lightning.pytorch.cli.instantiate_module``
3      the dotted path lies under a trusted package (``lit_score``, ``torch``, ``LIT_SCORE_ALLOWED_PACKAGES``):
       a string check, nothing imported yet
4      the path is ``module.Name`` with ``module`` importable as a module; ``Name`` is looked up in it once (no
       attribute chains: ``torch.os.system`` names no module ``torch.os``)
5      the object is a class (``inspect.isclass``): never a function, method, module or instance
6      the class is *defined* (``__module__``) in a trusted place: lit-score's own modules, ``torch.optim``
       (optimizers, schedulers), ``torch.nn.modules`` (layers), or a package of ``LIT_SCORE_ALLOWED_PACKAGES``
7      the class subclasses the type the receiving parameter declares (its annotation in the ``__init__`` of
       the class that takes it: ``nn.Module`` for a network, ``Optimizer`` for ``OptimizerCallable``, a
       ``Sampler`` …); a parameter that declares no class type takes no class path
=====  ======================================================================================================

Nested trees (``init_args`` of ``init_args``, ``dict_kwargs``, lists of components) are walked with the declared
types of the class that receives them, and a dotted string given where a class or callable is declared is checked
as a class path (jsonargparse would import it). Only after the whole tree passed is anything instantiated.

``LIT_SCORE_ALLOWED_PACKAGES=my_lab,other.models`` is the user's opt-in for their own components (classes defined
there pass steps 3 and 6; steps 4, 5 and 7 still hold).
"""

from __future__ import annotations

import collections.abc
import importlib
import inspect
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import torch
from lightning.pytorch.cli import instantiate_module

ALLOWED_ENV = "LIT_SCORE_ALLOWED_PACKAGES"
TRUSTED_PACKAGES = ("lit_score", "torch")  # where a class path may point (step 3)
TRUSTED_DEFINERS = ("lit_score", "torch.optim", "torch.nn.modules")  # where the class must be defined (step 6)
LIGHTNING_INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"
_MODULE_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")
_TREE_KEYS = ("init_args", "dict_kwargs")

T = TypeVar("T")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (missing, corrupt, unsafe or of another kind); reported as one line."""


def user_packages() -> tuple[str, ...]:
    """The packages the user trusts in addition to lit-score's own (``LIT_SCORE_ALLOWED_PACKAGES``)."""
    return tuple(p.strip() for p in os.environ.get(ALLOWED_ENV, "").split(",") if p.strip())


def _under(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def _refuse(source: str, key: str, class_path: Any, why: str) -> CheckpointError:
    where = f" at {key}" if key else ""
    return CheckpointError(f"{source} names {class_path!r}{where}, which {why}: nothing of it was called; use a"
                           f" checkpoint written by lit-score fit (or, for a class of your own, add its package to"
                           f" {ALLOWED_ENV})")


def resolve_class(class_path: Any, expected: tuple[type, ...], source: str = "the checkpoint", key: str = "") -> type:
    """The class ``class_path`` names, after steps 3–7 of the module docstring; :class:`CheckpointError` otherwise.
    ``expected`` are the types the receiving parameter declares (empty: it takes no class)."""
    if not isinstance(class_path, str) or not _MODULE_PATH.match(class_path):
        raise _refuse(source, key, class_path, "is not a dotted module.Class path")
    allowed = TRUSTED_PACKAGES + user_packages()
    if not _under(class_path, allowed):
        raise _refuse(source, key, class_path, f"lies outside the allowed packages ({', '.join(allowed)}) and was not"
                      " imported")
    if not expected:
        raise _refuse(source, key, class_path, "is given where the parameter declares no class type")
    module_name, _, name = class_path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise _refuse(source, key, class_path, f"is not module.Class ({module_name} is no importable module)") from err
    obj = getattr(module, name, None)
    if not inspect.isclass(obj):
        what = "nothing" if obj is None else type(obj).__name__
        raise _refuse(source, key, class_path, f"is not a class (it is {what})")
    if not _under(obj.__module__, TRUSTED_DEFINERS + user_packages()):
        raise _refuse(source, key, class_path, f"is a class defined in {obj.__module__}, not in lit-score, torch.optim,"
                      " torch.nn or an allowed package")
    if not issubclass(obj, expected):
        names = " or ".join(t.__name__ for t in expected)
        raise _refuse(source, key, class_path, f"is not a {names}, the type that parameter declares")
    return obj


def declared_classes(annotation: Any) -> tuple[type, ...]:
    """The classes a parameter annotation admits as a ``class_path``: ``X``, ``X | None``, ``type[X]`` and the return
    type of ``Callable[..., X]`` (how Lightning's ``OptimizerCallable`` declares an optimizer). Plain values (``int``,
    ``str`` …) admit no class path here: a class path is never what such a parameter wants."""
    if annotation is None or annotation is inspect.Parameter.empty or annotation is typing.Any:
        return ()
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return tuple(c for a in args for c in declared_classes(a))
    if origin is typing.Annotated:
        return declared_classes(args[0])
    if origin is collections.abc.Callable:
        return declared_classes(args[-1]) if args else ()
    if origin is type:
        return declared_classes(args[0]) if args else ()
    if origin is None and inspect.isclass(annotation):
        plain = (bool, int, float, complex, str, bytes, list, tuple, dict, set, type(None))
        return () if annotation in plain else (annotation,)
    return ()


def _element_annotation(annotation: Any) -> Any:
    """``X`` of ``list[X]`` / ``tuple[X, ...]`` / ``Sequence[X]`` (through ``| None``); ``Any`` otherwise."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        for a in args:
            inner = _element_annotation(a)
            if inner is not typing.Any:
                return inner
        return typing.Any
    if origin in (list, tuple, collections.abc.Sequence, collections.abc.Iterable) and args:
        return args[0]
    return typing.Any


def parameter_annotation(cls: type, name: str) -> Any:
    """The annotation of ``name`` in ``cls.__init__``, following ``**kwargs`` into the bases the way jsonargparse
    does; ``None`` when no class in the MRO declares it."""
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            signature = inspect.signature(init)
        except (TypeError, ValueError):
            return None
        parameter = signature.parameters.get(name)
        if parameter is not None:
            try:
                hints = typing.get_type_hints(init, include_extras=True)
            except Exception:  # an annotation that does not resolve here declares nothing we can check against
                return None
            return hints.get(name, parameter.annotation)
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
            return None
    return None


def check_arguments(cls: type, arguments: dict, source: str, key: str = "") -> None:
    """Check every class path in the keyword arguments of ``cls`` (recursively) against the declared types."""
    for name, value in arguments.items():
        if name in ("_class_path", "_instantiator"):
            continue
        check_value(value, parameter_annotation(cls, name), source, f"{key}.{name}" if key else name)


def check_value(value: Any, annotation: Any, source: str, key: str) -> None:
    """Check one argument value: a ``class_path`` tree, a dotted string where a class / callable is declared, or a
    container of those."""
    if isinstance(value, dict):
        if "class_path" in value:
            cls = resolve_class(value["class_path"], declared_classes(annotation), source, f"{key}.class_path")
            for tree in _TREE_KEYS:
                nested = value.get(tree)
                if nested is None:
                    continue
                if not isinstance(nested, dict):
                    raise _refuse(source, f"{key}.{tree}", nested, "is not a mapping of arguments")
                check_arguments(cls, nested, source, f"{key}.{tree}")
            return
        for name, item in value.items():
            check_value(item, typing.Any, source, f"{key}.{name}")
    elif isinstance(value, (list, tuple)):
        inner = _element_annotation(annotation)
        for i, item in enumerate(value):
            check_value(item, inner, source, f"{key}[{i}]")
    elif isinstance(value, str) and _MODULE_PATH.match(value) and declared_classes(annotation):
        resolve_class(value, declared_classes(annotation), source, key)  # jsonargparse would import this name


def check_hyperparameters(hparams: dict, base: type[T], source: str) -> type[T]:
    """The class a ``_class_path`` hyper-parameter tree (Lightning's record of a LightningCLI object) builds, after
    the whole tree passed the checks of the module docstring; ``base`` is what the caller expects it to be."""
    if not isinstance(hparams, dict) or "_class_path" not in hparams:
        raise CheckpointError(f"{source} records no model class (no _class_path): it was not written by"
                              " `lit-score fit`")
    instantiator = hparams.get("_instantiator")
    if instantiator is not None and instantiator != LIGHTNING_INSTANTIATOR:
        raise _refuse(source, "_instantiator", instantiator, f"is not Lightning's {LIGHTNING_INSTANTIATOR}")
    cls = resolve_class(hparams["_class_path"], (base,), source, "_class_path")
    check_arguments(cls, hparams, source)
    return cls


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint weights-only onto the CPU, or stop with one line saying why it cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: pass the path of a .ckpt file written by"
                              " lit-score fit")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises RuntimeError / UnpicklingError / EOFError / ValueError for bad files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        reason = ("it holds pickled objects, which lit-score never loads" if "weights_only" in str(err)
                  else f"it is truncated or not a checkpoint ({first[:120]})")
        raise CheckpointError(f"cannot read checkpoint {path}: {reason}; use a .ckpt written by lit-score fit") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"checkpoint {path} holds no model weights: use a .ckpt written by lit-score fit")
    return ckpt


def checkpoint_class(path: str | Path, base: type[T], ckpt: dict | None = None) -> type[T]:
    """The model class of a checkpoint, after its whole hyper-parameter tree passed :func:`check_hyperparameters`."""
    ckpt = read_checkpoint(path) if ckpt is None else ckpt
    return check_hyperparameters(ckpt.get("hyper_parameters") or {}, base, f"checkpoint {path}")


def load_module(path: str | Path, base: type[T], map_location: str | torch.device = "cpu") -> T:
    """The checkpoint's LightningModule, built as the class that wrote it (a subclass of ``base``) once every class
    it names passed the checks; Lightning re-reads the file weights-only."""
    cls = checkpoint_class(path, base)
    return cls.load_from_checkpoint(path, map_location=map_location, weights_only=True)


def load_datamodule(path: str | Path, base: type[T], ckpt: dict | None = None) -> T:
    """The data module a checkpoint was trained on, rebuilt from its ``datamodule_hyper_parameters`` after the same
    checks; :class:`CheckpointError` when the checkpoint records none."""
    ckpt = read_checkpoint(path) if ckpt is None else ckpt
    hparams = ckpt.get("datamodule_hyper_parameters")
    if not hparams:
        raise CheckpointError(f"checkpoint {path} records no data module: pass --data (class_path/init_args)")
    cls = check_hyperparameters(hparams, base, f"checkpoint {path} (its data module)")
    nested = any(isinstance(v, dict) and "class_path" in v for v in hparams.values())
    if nested and hparams.get("_instantiator"):  # a LightningCLI record with components (checked above): built as fit
        return instantiate_module(cls, {k: v for k, v in hparams.items() if k != "_instantiator"})  # built them
    return cls(**{k: v for k, v in hparams.items() if not k.startswith("_")})

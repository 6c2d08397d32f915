"""Registration with transformers' Auto classes and pipeline registry, without making ``import segcompass`` heavy.

Registration is per process and is not persisted (dependency notes §3). Each module that defines a registered class
registers it at the end of its own import (``modeling_segcompass``: config + model; ``processing_segcompass``:
processor; ``pipelines``: the task; ``sae.modeling_sae``: the SAE), so whoever imports a class has it registered;
:func:`register` imports all of them.

``import segcompass`` imports no transformers. It calls :func:`register_when_transformers_is_imported`: when
transformers is already imported it registers at once; otherwise an import hook waits for ``import transformers`` and
registers right after it — unless that import happens inside a segcompass submodule that is still loading (its
classes may not exist yet), in which case it registers as soon as the outermost loading segcompass module has
finished. So ``segcompass --help`` never pays for torch, and ``import segcompass; from transformers import AutoModel;
AutoModel.from_pretrained(dir)`` finds the SegCompass classes.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import sys

__all__ = ["deferred_registration", "register", "register_when_transformers_is_imported"]

_DEFINING_MODULES = ("sae.modeling_sae", "modeling_segcompass", "processing_segcompass", "pipelines")
_STATE = {"registered": False, "pending": False}


def register() -> None:
    """Register the SegCompass and SAE config / model / processor classes and the pipeline task (idempotent)."""
    if _STATE["registered"]:
        return
    _remove_hook()
    for module in _DEFINING_MODULES:
        importlib.import_module(f"{__package__}.{module}")
    _STATE["registered"], _STATE["pending"] = True, False


def _loading_submodules(besides: str = "") -> list[str]:
    """The segcompass submodules being imported right now (their classes may not be defined yet)."""
    return [name for name, module in list(sys.modules.items())
            if name.startswith(f"{__package__}.") and name != besides
            and getattr(getattr(module, "__spec__", None), "_initializing", False)]


class _AfterLoad(importlib.abc.Loader):
    """Wraps a module's own loader and calls ``then(module)`` once the module has been executed."""

    def __init__(self, loader, then):
        self._loader, self._then = loader, then

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        self._then(module)

    def __getattr__(self, name):  # resources, is_package, get_code ... of the wrapped loader
        return getattr(self._loader, name)


def _after_transformers(module) -> None:
    if _loading_submodules():
        _STATE["pending"] = True  # a segcompass submodule imported transformers half-way: wait for it to finish
    else:
        register()


def _after_segcompass_module(module) -> None:
    if _STATE["pending"] and not _loading_submodules(besides=module.__name__):
        register()


class _ImportHook(importlib.abc.MetaPathFinder):
    """Gives ``transformers`` and every ``segcompass.*`` module its normal spec with a loader that registers
    SegCompass afterwards when the time has come (see the module docstring). Removed once registered."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "transformers":
            then = _after_transformers
        elif fullname.startswith(f"{__package__}."):
            then = _after_segcompass_module
        else:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _AfterLoad(spec.loader, then)
                return spec
        return None


def _remove_hook() -> None:
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _ImportHook)]


def register_when_transformers_is_imported() -> None:
    """Register now if transformers is imported (and no segcompass submodule is loading), else as soon as it is."""
    if _STATE["registered"] or any(isinstance(finder, _ImportHook) for finder in sys.meta_path):
        return
    if "transformers" in sys.modules and not _loading_submodules():
        register()
        return
    _STATE["pending"] = "transformers" in sys.modules
    sys.meta_path.insert(0, _ImportHook())


@contextlib.contextmanager
def deferred_registration():
    """Inside: importing transformers does not register SegCompass (so no torch import). The command line parses its
    options this way and calls :func:`register` itself before running a command; if the block leaves transformers
    unimported, the import hook is put back."""
    hooked = any(isinstance(finder, _ImportHook) for finder in sys.meta_path)
    _remove_hook()
    try:
        yield
    finally:
        if hooked and "transformers" not in sys.modules and not _STATE["registered"]:
            sys.meta_path.insert(0, _ImportHook())

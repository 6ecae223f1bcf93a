"""fedflow: run federated analyses across data-holding sites from one study file.

    >>> import fedflow
    >>> run = fedflow.run("examples/quickstart/study.toml", compare=True)

The package root stays light (the node agent imports it at every site); the Python API is
loaded on first use: ``fedflow.run``, ``fedflow.Run``, ``fedflow.load_study``, ``fedflow.Study``,
``fedflow.FedflowError``.
"""

from fedflow._version import __version__

__all__ = ["FedflowError", "Run", "Study", "__version__", "load_study", "run"]

_LAZY = {
    "run": "fedflow.api",
    "Run": "fedflow.results.run",
    "Study": "fedflow.study",
    "load_study": "fedflow.study",
    "FedflowError": "fedflow.errors",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fedflow' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted({*__all__, *(n for n in globals() if n.startswith("__"))})

"""Import a heavy module when it is first used, not when jaxtrain is imported.

`orbax.checkpoint` costs about a fifth of `import jaxtrain` (tensorstore, asyncio,
uvloop) and a run with `checkpoint.enabled: false` never touches it. A module
returned by `lazy_module` runs its import on the first attribute access.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def lazy_module(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named '{name}'", name=name)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module

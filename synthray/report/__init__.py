"""Results people look at: the study's figures and a sortable table, in one HTML page (`synthray report`).

`synthray.report(...)` is also the Python API's `report` (`synthray.api.report`): once this package is imported,
the name `synthray.report` is the package, so the package itself is callable and forwards to the API.
"""

import sys
import types
from typing import Any


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from synthray.api import report

        return report(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage

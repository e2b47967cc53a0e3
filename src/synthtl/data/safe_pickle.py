"""Reading pickled dataset files without running code.

CIFAR's "python version" files are pickles, and a pickle can name any function for the reader to call (a `__reduce__`
payload runs as the file is read). The official files hold only dicts, lists, text, bytes, numbers and numpy arrays,
so an unpickler that can build those and nothing else reads them; anything else is refused before it is called."""

from __future__ import annotations

import os
import pickle
from typing import Any

import numpy as np

from synthtl.errors import DataError

# The only globals an official file needs: numpy's array reconstruction (numpy 1.x and 2.x module names), and the
# text-to-bytes codec that protocol-2 pickles written by Python 3 use for bytes (it runs no code).
ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
           ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}
PLAIN = (dict, list, tuple, str, bytes, int, float, bool, type(None))


class _Refused(Exception):
    pass


class _Restricted(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED:
            return super().find_class(module, name)
        raise _Refused(f"{module}.{name}")


def _check(value: Any, depth: int = 0) -> None:
    """Only the types official files hold, with numeric (never object) arrays."""
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise _Refused("a numpy array of Python objects")
        return
    if not isinstance(value, PLAIN) or depth > 4:
        raise _Refused(f"a {type(value).__name__}")
    items = value.items() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    for item in items:
        for part in item if isinstance(value, dict) else (item,):
            _check(part, depth + 1)


def load(path: str | os.PathLike) -> Any:
    """The content of a pickled dataset file, read without running any code it names; a file that asks for something
    an official file never holds, or is damaged, is refused in one line naming it."""
    try:
        with open(path, "rb") as f:
            value = _Restricted(f, encoding="latin1").load()
        _check(value)
    except _Refused as e:
        raise DataError(f"{path} is not an official dataset file: it holds {e}, which synthtl never loads (reading it "
                        "could run code); replace it with the file from the official archive") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError) as e:
        raise DataError(f"{path} is not a readable dataset file ({type(e).__name__}); replace it with the file from "
                        "the official archive") from None
    return value

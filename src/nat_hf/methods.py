"""The registry of NAT methods: `NATConfig.objective` names a row. Adding a method means one file
`method_<name>.py` and one row here.

Static relative imports only (remote code copies the files they name), and apart from `method_base.py`, which the
method files import: keeping the table there would make an import cycle.
"""

from .method_axe import AXEMethod
from .method_base import NATMethod
from .method_cmlm import CMLMMethod
from .method_ctc import CTCMethod
from .method_dag import DAGMethod
from .method_glat import GLATMethod
from .method_vanilla import VanillaMethod

METHODS: dict[str, NATMethod] = {
    "cmlm": CMLMMethod(),
    "vanilla": VanillaMethod(),
    "glat": GLATMethod(),
    "ctc": CTCMethod(),
    "dag": DAGMethod(),
    "axe": AXEMethod(),
}


def decoding_option_help() -> dict[str, tuple[type, str]]:
    """`{option: (type, help)}` over every method's decoding options (first declaration wins), for CLI flags."""
    merged: dict[str, tuple[type, str]] = {}
    for method in METHODS.values():
        for name, declared in method.option_help().items():
            merged.setdefault(name, declared)
    return merged

# Minimal type stub for the parts of kconfiglib 14.1.0 that explain.py uses (kconfiglib ships none).
from collections.abc import Callable
from typing import TypeAlias

Expr: TypeAlias = Symbol | Choice | tuple[int, Expr] | tuple[int, Expr, Expr]

AND: int
OR: int
NOT: int
EQUAL: int
UNEQUAL: int
LESS: int
LESS_EQUAL: int
GREATER: int
GREATER_EQUAL: int
REL_TO_STR: dict[int, str]

UNKNOWN: int
BOOL: int
TRISTATE: int
STRING: int
INT: int
HEX: int
TYPE_TO_STR: dict[int, str]
TRI_TO_STR: dict[int, str]
STR_TO_TRI: dict[str, int]

MENU: int
COMMENT: int

_T_MODULES: int
_T_OPTION: int

class KconfigError(Exception): ...

class MenuNode:
    kconfig: Kconfig
    item: Symbol | Choice | int
    parent: MenuNode | None
    prompt: tuple[str, Expr] | None
    dep: Expr
    filename: str
    linenr: int
    is_menuconfig: bool
    list: MenuNode | None
    next: MenuNode | None

class Symbol:
    kconfig: Kconfig
    name: str
    nodes: list[MenuNode]
    orig_type: int
    is_constant: bool
    choice: Choice | None
    defaults: list[tuple[Expr, Expr]]
    selects: list[tuple[Symbol, Expr]]
    implies: list[tuple[Symbol, Expr]]
    ranges: list[tuple[Symbol, Symbol, Expr]]
    direct_dep: Expr
    rev_dep: Expr
    weak_rev_dep: Expr
    user_value: int | str | None
    env_var: str | None
    @property
    def type(self) -> int: ...
    @property
    def str_value(self) -> str: ...
    @property
    def tri_value(self) -> int: ...
    @property
    def visibility(self) -> int: ...
    @property
    def config_string(self) -> str: ...
    @property
    def name_and_loc(self) -> str: ...
    def set_value(self, value: int | str) -> bool: ...
    def unset_value(self) -> None: ...

class Choice:
    kconfig: Kconfig
    name: str | None
    nodes: list[MenuNode]
    orig_type: int
    syms: list[Symbol]
    defaults: list[tuple[Symbol, Expr]]
    direct_dep: Expr
    user_value: int | None
    user_selection: Symbol | None
    is_optional: bool
    is_constant: bool
    @property
    def type(self) -> int: ...
    @property
    def str_value(self) -> str: ...
    @property
    def tri_value(self) -> int: ...
    @property
    def visibility(self) -> int: ...
    @property
    def selection(self) -> Symbol | None: ...
    @property
    def name_and_loc(self) -> str: ...

class Kconfig:
    srctree: str
    syms: dict[str, Symbol]
    const_syms: dict[str, Symbol]
    unique_defined_syms: list[Symbol]
    choices: list[Choice]
    y: Symbol
    m: Symbol
    n: Symbol
    modules: Symbol
    warnings: list[str]
    config_prefix: str
    top_node: MenuNode
    def __init__(self, filename: str = ..., warn: bool = ..., warn_to_stderr: bool = ...,
                 encoding: str = ..., suppress_traceback: bool = ...) -> None: ...
    def load_config(self, filename: str | None = ..., replace: bool = ..., verbose: bool | None = ...) -> str: ...
    def write_config(self, filename: str | None = ..., header: str | None = ..., save_old: bool = ...,
                     verbose: bool | None = ...) -> str: ...
    def _tokenize(self, s: str) -> list[object]: ...
    def _propagate_deps(self, node: MenuNode, visible_if: Expr) -> None: ...

def expr_value(expr: Expr) -> int: ...
def expr_items(expr: Expr) -> set[Symbol | Choice]: ...
def expr_str(expr: Expr, sc_expr_str_fn: Callable[[Symbol | Choice], str] = ...) -> str: ...
def split_expr(expr: Expr, op: int) -> list[Expr]: ...
def standard_sc_expr_str(sc: Symbol | Choice) -> str: ...
def unescape(s: str) -> str: ...

"""Statement order inside one function body: which branches and loops surround a node, and
whether one point of the body can run after another in the same pass.

Scope-aware rules record the calls they care about as *sites*: any object with ``index`` (its
position in statement order within the body) and ``path`` (the arms around it, from
:func:`path_to`). They then ask :func:`precedes`, :func:`exclusive` and the helpers below. The
analysis is deliberately small and knows nothing about any rule:

* A path is the tuple of :class:`Arm` around a node, outermost first, up to the enclosing function
  (or module) body. Arms are the branches of ``if``, conditional expressions, ``match`` cases,
  ``try`` bodies, handlers, ``else`` and ``finally`` blocks, and loop bodies.
* A ``for``/``while`` body counts as one pass (one training step): an event late in the body does
  not precede an earlier one through the loop's back edge.
* Two sites in different arms of one conditional statement never run in the same pass, nor does
  anything after a site whose arm always leaves (``return``/``raise``; ``continue``/``break`` when
  the later site is inside the same loop).
* A node inside a ``lambda`` has no path: it runs at another time.
"""

from __future__ import annotations

import ast
from typing import Callable, Iterable, Iterator, NamedTuple, Protocol

__all__ = [
    "Arm", "Site", "path_to", "exclusive", "precedes", "between", "arms_apart", "in_other_arm", "loops_around", "inside",
]


class Arm(NamedTuple):
    """One branch or loop body around a node."""

    stmt: ast.AST  # the If / IfExp / For / While / Try / Match node
    name: str  # "body", "orelse", "loop", "final", "handler<i>" or "case<i>"
    conditional: bool  # False for arms that always run when the statement does (loop, try body, finally)


class Site(Protocol):
    """A recorded point of one body: its position in statement order and the arms around it."""

    index: int
    path: tuple[Arm, ...]


_SCOPE_NODES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Module, ast.ClassDef, ast.Lambda)
_LOOPS = (ast.For, ast.AsyncFor, ast.While)
_TRIES = (ast.Try, getattr(ast, "TryStar", ast.Try))  # try/except* is Python 3.11+
_ARM_FIELDS = {"body": "body", "loop": "body", "orelse": "orelse", "final": "finalbody"}


def _contains(block: list, node: ast.AST) -> bool:
    return any(item is node for item in block)


def _arm(parent: ast.AST, child: ast.AST) -> Arm | None:
    """The arm of ``parent`` that ``child`` sits in, if ``parent`` branches or loops."""
    if isinstance(parent, ast.IfExp):
        if child is parent.test:
            return None
        return Arm(parent, "body" if child is parent.body else "orelse", True)
    if isinstance(parent, ast.If):
        if child is parent.test:
            return None
        return Arm(parent, "body" if _contains(parent.body, child) else "orelse", True)
    if isinstance(parent, _LOOPS):
        if _contains(parent.body, child):
            return Arm(parent, "loop", False)
        if _contains(parent.orelse, child):
            return Arm(parent, "orelse", True)
        return None
    if isinstance(parent, _TRIES):
        if _contains(parent.body, child):
            return Arm(parent, "body", False)
        if _contains(parent.finalbody, child):
            return Arm(parent, "final", False)
        if _contains(parent.orelse, child):
            return Arm(parent, "orelse", True)
        for i, handler in enumerate(parent.handlers):
            if handler is child:
                return Arm(parent, f"handler{i}", True)
        return None
    if isinstance(parent, ast.Match):
        for i, case in enumerate(parent.cases):
            if case is child:
                return Arm(parent, f"case{i}", True)
    return None


def path_to(node: ast.AST, parent_of: Callable[[ast.AST], ast.AST | None]) -> tuple[Arm, ...] | None:
    """The arms around ``node`` up to its function (or module) body, outermost first; None when
    ``node`` is inside a lambda. ``parent_of`` maps a node to its parent (``Context.parent``)."""
    arms = []
    child = node
    parent = parent_of(child)
    while parent is not None and not isinstance(parent, _SCOPE_NODES):
        arm = _arm(parent, child)
        if arm is not None:
            arms.append(arm)
        child, parent = parent, parent_of(parent)
    if isinstance(parent, ast.Lambda):
        return None
    arms.reverse()
    return tuple(arms)


def _block(arm: Arm) -> list:
    """The statements of one arm (for the early-exit check); [] for an expression's arm."""
    stmt, name = arm.stmt, arm.name
    if name.startswith("handler"):
        return stmt.handlers[int(name[7:])].body
    if name.startswith("case"):
        return stmt.cases[int(name[4:])].body
    block = getattr(stmt, _ARM_FIELDS[name])
    return block if isinstance(block, list) else []


def _shared(a: tuple[Arm, ...], b: tuple[Arm, ...]) -> int:
    """How many outer arms two paths have in common."""
    n = 0
    while n < len(a) and n < len(b) and a[n][0] is b[n][0] and a[n][1] == b[n][1]:
        n += 1
    return n


def exclusive(first: Site, later: Site) -> bool:
    """True when ``later`` cannot run after ``first`` in the same pass: different arms of one
    ``if``/``match``/``except``, or ``first`` sits in an arm that always leaves."""
    pa, pb = first.path, later.path
    n = _shared(pa, pb)
    if n < len(pa) and n < len(pb) and pa[n][0] is pb[n][0] and pa[n][2] and pb[n][2]:
        return True
    crossed_loop = False
    for arm in pa[n:]:
        if arm.name == "loop":
            crossed_loop = True
        if not arm.conditional:
            continue
        exits = (ast.Return, ast.Raise) if crossed_loop else (ast.Return, ast.Raise, ast.Continue, ast.Break)
        if any(isinstance(s, exits) for s in _block(arm)):
            return True
    return False


def precedes(first: Site, later: Site) -> bool:
    """``first`` comes before ``later`` in statement order and can run before it in the same pass."""
    return first.index < later.index and not exclusive(first, later)


def between(start: Site, end: Site, sites: Iterable[Site]) -> bool:
    """Some site lies strictly between ``start`` and ``end`` in statement order."""
    return any(start.index < s.index < end.index for s in sites)


def arms_apart(site: Site, other: Site) -> Iterator[Arm]:
    """The conditional arms around ``site`` that do not also surround ``other``, outermost first."""
    for arm in site.path[_shared(site.path, other.path):]:
        if arm.conditional:
            yield arm


def in_other_arm(site: Site, arm: Arm) -> bool:
    """``site`` lies in another arm of the statement that ``arm`` belongs to."""
    return any(a.stmt is arm.stmt and a.name != arm.name for a in site.path)


def loops_around(site: Site) -> Iterator[ast.AST]:
    """The loop statements whose body holds ``site``, innermost first."""
    for arm in reversed(site.path):
        if arm.name == "loop":
            yield arm.stmt


def inside(site: Site, stmt: ast.AST) -> bool:
    """``site`` lies in some arm of ``stmt`` (a loop body, a branch, ...)."""
    return any(arm.stmt is stmt for arm in site.path)

"""The statement-order analysis (``training_profiler.linter.flow``) on hand-written bodies.

Each snippet calls bare functions ``a()``, ``b()``, ...; a site is recorded for every such call
in source order, the way a rule records its events, and the tests ask the flow questions about
them directly.
"""

from __future__ import annotations

import ast
import textwrap
from types import SimpleNamespace

from training_profiler.linter import flow


def sites(source: str) -> dict[str, SimpleNamespace]:
    """One site per bare call, keyed by the called name, indexed in source order."""
    tree = ast.parse(textwrap.dedent(source))
    parents = {id(child): node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    calls = sorted(
        (n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)),
        key=lambda n: (n.lineno, n.col_offset),
    )
    out = {}
    for index, call in enumerate(calls):
        path = flow.path_to(call, lambda n: parents.get(id(n)))
        out[call.func.id] = SimpleNamespace(index=index, path=path, node=call)
    return out


def arms(site) -> list[tuple[str, str, bool]]:
    return [(type(arm.stmt).__name__, arm.name, arm.conditional) for arm in site.path]


def test_paths_name_every_arm_outermost_first():
    s = sites(
        """
        def f(xs, c):
            a()
            for x in xs:
                try:
                    if c:
                        b()
                    else:
                        d()
                except ValueError:
                    e()
                finally:
                    g()
            else:
                h()
        """
    )
    assert arms(s["a"]) == []
    assert arms(s["b"]) == [("For", "loop", False), ("Try", "body", False), ("If", "body", True)]
    assert arms(s["d"]) == [("For", "loop", False), ("Try", "body", False), ("If", "orelse", True)]
    assert arms(s["e"]) == [("For", "loop", False), ("Try", "handler0", True)]
    assert arms(s["g"]) == [("For", "loop", False), ("Try", "final", False)]
    assert arms(s["h"]) == [("For", "orelse", True)]


def test_if_test_and_conditional_expression():
    s = sites(
        """
        def f():
            if a():
                b()
            x = c() if d() else e()
        """
    )
    assert arms(s["a"]) == []  # the test runs whichever arm is taken
    assert arms(s["c"]) == [("IfExp", "body", True)]
    assert arms(s["d"]) == []
    assert arms(s["e"]) == [("IfExp", "orelse", True)]
    assert flow.exclusive(s["c"], s["e"])
    assert flow.precedes(s["a"], s["b"]) and flow.precedes(s["d"], s["e"])


def test_a_lambda_has_no_path_but_a_nested_call_argument_does():
    s = sites(
        """
        def f(xs):
            xs.sort(key=lambda x: a(x))
            b(c())
        """
    )
    assert s["a"].path is None
    assert s["b"].path == () and s["c"].path == ()


def test_sequential_statements_precede_in_order():
    s = sites(
        """
        def f():
            a()
            b()
        """
    )
    assert flow.precedes(s["a"], s["b"])
    assert not flow.precedes(s["b"], s["a"])
    assert not flow.exclusive(s["a"], s["b"])


def test_arms_of_one_if_match_or_try_are_exclusive():
    s = sites(
        """
        def f(c, v):
            if c:
                a()
            else:
                b()
            match v:
                case 1:
                    d()
                case _:
                    e()
            try:
                g()
            except KeyError:
                h()
            except ValueError:
                k()
        """
    )
    assert flow.exclusive(s["a"], s["b"]) and not flow.precedes(s["a"], s["b"])
    assert flow.exclusive(s["d"], s["e"])
    assert flow.exclusive(s["h"], s["k"])
    assert not flow.exclusive(s["g"], s["h"])  # the try body runs before a handler
    assert flow.precedes(s["a"], s["d"]) and flow.precedes(s["b"], s["g"])


def test_an_arm_that_returns_does_not_reach_later_code():
    s = sites(
        """
        def f(c):
            if c:
                a()
                return
            b()
            if not c:
                d()
                raise ValueError
            e()
        """
    )
    assert flow.exclusive(s["a"], s["b"]) and not flow.precedes(s["a"], s["b"])
    assert flow.exclusive(s["d"], s["e"])
    assert flow.precedes(s["b"], s["d"])


def test_continue_and_break_leave_the_iteration_not_the_function():
    s = sites(
        """
        def f(xs, c):
            for x in xs:
                if c:
                    a()
                    continue
                b()
                if x:
                    d()
                    break
            e()
        """
    )
    assert flow.exclusive(s["a"], s["b"])  # later in the same iteration
    assert not flow.exclusive(s["a"], s["e"])  # after the loop: continue does not get past it
    assert flow.precedes(s["d"], s["e"])


def test_between_counts_statement_order_only():
    s = sites(
        """
        def f(c):
            a()
            if c:
                b()
            else:
                d()
            e()
        """
    )
    assert flow.between(s["a"], s["e"], [s["b"]])
    assert flow.between(s["a"], s["e"], [s["d"]])
    assert not flow.between(s["a"], s["b"], [s["d"], s["e"]])
    assert not flow.between(s["a"], s["e"], [])


def test_arms_apart_and_other_arm():
    s = sites(
        """
        def f(c, xs):
            if c:
                a()
                for x in xs:
                    if x:
                        b()
            else:
                d()
        """
    )
    apart = list(flow.arms_apart(s["b"], s["a"]))  # the `if c` arm is shared; the loop is not conditional
    assert [(type(arm.stmt).__name__, arm.name) for arm in apart] == [("If", "body")]
    assert apart[0].stmt.test.id == "x"
    outer = s["a"].path[0]
    assert flow.in_other_arm(s["d"], outer)
    assert not flow.in_other_arm(s["b"], outer)
    assert list(flow.arms_apart(s["a"], s["b"])) == []


def test_loops_around_innermost_first_and_inside():
    s = sites(
        """
        def f(batches):
            for batch in batches:
                a()
                while batch:
                    b()
            d()
        """
    )
    loops = list(flow.loops_around(s["b"]))
    assert [type(loop).__name__ for loop in loops] == ["While", "For"]
    assert flow.inside(s["a"], loops[1]) and not flow.inside(s["a"], loops[0])
    assert list(flow.loops_around(s["d"])) == []
    assert not flow.inside(s["d"], loops[1])

"""The workflow harness (tests/remote/workflows.py): its expressions and files, without a run.

The remote tier runs the workflows through it; here its rules are checked against GitHub's
documented behaviour, and every `${{ }}` and `if:` of our workflows must be one it reads,
so a workflow change it cannot follow fails in seconds instead of in the remote tier.
"""

from __future__ import annotations

import pytest
import yaml

from tests.remote.workflows import EXPR, WorkflowError, _read_pairs, condition, evaluate, render
from tests.unit.test_workflows_lint import WORKFLOWS

CONTEXT = {
    "github": {"ref": "refs/heads/main", "sha": "abc"},
    "needs": {
        "staged": {"result": "success", "outputs": {"image": ""}},
        "build": {"result": "success", "outputs": {"image": "reg/app:abc"}},
    },
}


@pytest.mark.parametrize(
    ("expr", "value"),
    [
        # && and || give one of their operands (GitHub's rule), not a boolean
        ("needs.staged.outputs.image || needs.build.outputs.image", "reg/app:abc"),
        ("'' || '' && 'b'", ""),
        ("'a' && 'b' || 'c'", "b"),
        ("needs.staged.outputs.image && 'x'", ""),
        # comparisons are case-insensitive on strings
        ("github.ref == 'REFS/HEADS/MAIN'", True),
        ("needs.build.result != 'success'", False),
        ("!(needs.staged.outputs.image != '') && true", True),
        ("needs.nope.outputs.image", ""),
    ],
)
def test_expressions_follow_githubs_rules(expr, value):
    assert evaluate(expr, CONTEXT) == value


def test_status_functions_and_if_conditions():
    assert evaluate("failure()", CONTEXT, "failure") is True
    assert evaluate("success()", CONTEXT, "failure") is False
    # an if: without a status function runs only after success; always() runs anyway
    assert condition("needs.build.result == 'success'", CONTEXT, "failure") is False
    assert condition("${{ always() && needs.build.result == 'success' }}", CONTEXT, "failure")
    assert condition(None, CONTEXT, "success") and not condition(None, CONTEXT, "failure")


def test_render_and_what_it_refuses():
    assert render("image=${{ needs.build.outputs.image }} ok=${{ true }}", CONTEXT) == (
        "image=reg/app:abc ok=true"
    )
    for bad in ("fromJSON(x)", "a == ", "(a", "a b"):
        with pytest.raises(WorkflowError):
            evaluate(bad, CONTEXT)


def test_github_output_and_env_files():
    text = "image=reg/app@sha256:1\nNOTE<<EOF\nline 1\nline=2\nEOF\nEMPTY=\n"
    assert _read_pairs(text) == {
        "image": "reg/app@sha256:1",
        "NOTE": "line 1\nline=2",
        "EMPTY": "",
    }


def _expressions(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "if":
                m = EXPR.fullmatch(str(value).strip())
                yield m.group(1) if m else str(value)
            else:
                yield from _expressions(value)
    elif isinstance(node, list):
        for value in node:
            yield from _expressions(value)
    elif isinstance(node, str):
        yield from (m.group(1) for m in EXPR.finditer(node))


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_the_harness_reads_every_expression_of_our_workflows(workflow):
    found = list(_expressions(yaml.safe_load(workflow.read_text())))
    assert found, f"no expressions in {workflow.name}?"
    for expr in found:
        evaluate(expr, CONTEXT)  # raises WorkflowError naming what it cannot read

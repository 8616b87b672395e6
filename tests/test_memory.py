"""The processes' malloc arena cap (memory.py)."""

from __future__ import annotations

import ast
import platform

import pytest

import memory
from tests.conftest import ROOT


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_the_arena_cap_is_taken_by_glibc():
    assert memory.limit_malloc_arenas() is True


@pytest.mark.parametrize(
    ("path", "function"), [("server.py", "create_application"), ("worker.py", "main")]
)
def test_the_cap_comes_first_in_the_web_app_and_the_worker(path, function):
    """Both entry points cap the arenas before anything else, before any thread has made one."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    (body,) = [
        n.body for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function
    ]
    statements = [
        s for s in body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))
    ]
    assert ast.unparse(statements[0]) == "memory.limit_malloc_arenas()"

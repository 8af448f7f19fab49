"""The documentation is tested: every ```python block of README.md and docs/**/*.md runs, its
relative links resolve, and its pages stay short enough to read.

A page's Python blocks run in order in one fresh interpreter (a later block may use names
from an earlier one of the same page), from the repository root, with the suite's own cache
(``$ADAINFER_CACHE_DIR``, see ``conftest.own_cache``) and the shared data. One test per page
that has Python blocks; a page whose blocks load the embedded SmolLM2 (``PackagedGGUFModel(...)
.load()``, as opposed to borrowing its tokenizer for a ``TinyRandomModel``) is marked slow.
Other blocks (bash, yaml, plain text) are not run.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

README_LINES = 200  # README.md stays under this many lines
PAGE_LINES = 300  # no Markdown page under docs/ is longer

FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[ \t]*$")


def pages() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def name(page: Path) -> str:
    return page.relative_to(REPO).as_posix()


def blocks(page: Path) -> list[tuple[str, str]]:
    """Every fenced block of ``page`` as (language, code), code dedented by its fence's indent."""
    found, lang, indent, code = [], None, "", []
    for line in page.read_text(encoding="utf-8").splitlines():
        fence = FENCE.match(line)
        if lang is None:
            if fence:
                lang, indent, code = fence["lang"], fence["indent"], []
        elif fence and not fence["lang"]:
            found.append((lang, "\n".join(code) + "\n"))
            lang = None
        else:
            code.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
    assert lang is None, f"{name(page)}: a ```{lang} block is never closed"
    return found


def python_blocks(page: Path) -> list[str]:
    return [code for lang, code in blocks(page) if lang == "python"]


def loads_smollm2(codes: list[str]) -> bool:
    """Whether the blocks load a packaged GGUF model itself (tens of seconds), not only its
    tokenizer: ``PackagedGGUFModel(...).load()``, or ``.load()`` on a name bound to one."""
    tree = ast.parse("\n".join(codes))

    def packaged(node: ast.AST) -> bool:
        return (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "PackagedGGUFModel"
        )

    names = {
        target.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and packaged(node.value)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    return any(
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "load"
        and (
            packaged(node.func.value)
            or (isinstance(node.func.value, ast.Name) and node.func.value.id in names)
        )
        for node in ast.walk(tree)
    )


def page_params() -> list:
    params = []
    for page in pages():
        codes = python_blocks(page)
        if codes:
            marks = [pytest.mark.slow] if loads_smollm2(codes) else []
            params.append(pytest.param(page, marks=marks, id=name(page)))
    return params


# Runs the blocks (JSON on stdin) in one namespace; on a failure, names the block and stops.
HARNESS = """
import json, sys, traceback
page, codes = json.load(sys.stdin)
namespace = {"__name__": "__main__"}
for number, code in enumerate(codes, 1):
    try:
        exec(compile(code, f"{page}, python block {number}", "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        print(f"ADAINFER-DOCS-FAILED-BLOCK {number}", file=sys.stderr)
        sys.exit(1)
"""


@pytest.mark.parametrize("page", page_params())
def test_python_blocks_run(page: Path, data_dir: Path) -> None:
    codes = python_blocks(page)
    env = {**os.environ, "ADAINFER_DATA_DIR": str(data_dir)}  # and the suite's cache dir
    proc = subprocess.run(
        [sys.executable, "-c", HARNESS],
        input=json.dumps([name(page), codes]),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        failed = re.search(r"ADAINFER-DOCS-FAILED-BLOCK (\d+)", proc.stderr)
        number = int(failed[1]) if failed else None
        block = codes[number - 1] if number else "(the interpreter did not reach a block)"
        pytest.fail(
            f"{name(page)}: python block {number} of {len(codes)} failed "
            f"(exit status {proc.returncode}):\n\n{block}\n--- stderr ---\n{proc.stderr[-6000:]}",
            pytrace=False,
        )


LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def prose(page: Path) -> list[str]:
    """The page's lines outside fenced blocks."""
    kept, inside = [], False
    for line in page.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            inside = not inside
        elif not inside:
            kept.append(line)
    return kept


def anchors(page: Path) -> set[str]:
    """The anchors of the page's headings; a repeated heading gets -1, -2, ... as on GitHub."""
    found: set[str] = set()
    counts: dict[str, int] = {}
    for line in prose(page):
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            base = slug(heading[1])
            count = counts.get(base, 0)
            found.add(f"{base}-{count}" if count else base)
            counts[base] = count + 1
    return found


def test_relative_links_resolve() -> None:
    broken = []
    for page in pages():
        for link in LINK.finditer("\n".join(prose(page))):  # link text may span lines
            target = link["target"]
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.exists():
                broken.append(f"{name(page)}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"{name(page)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_pages_stay_short() -> None:
    readme = len((REPO / "README.md").read_text(encoding="utf-8").splitlines())
    assert readme < README_LINES, f"README.md has {readme} lines (keep it under {README_LINES})"
    long = {
        name(page): lines
        for page in sorted((REPO / "docs").rglob("*.md"))
        if (lines := len(page.read_text(encoding="utf-8").splitlines())) > PAGE_LINES
    }
    assert not long, f"pages over {PAGE_LINES} lines (split them): {long}"

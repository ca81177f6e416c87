"""The repository's documents point only at things inside the repository.

A user's clone has this repository and nothing around it, so:

* every relative link in a Markdown file resolves to a file (and heading)
  that exists in the repository;
* no Markdown file, Python docstring or comment, or other tracked text file
  names a parent-directory path leaving the repository, or a ``.md`` file
  that the repository does not have;
* the names in the "Where each decision lives" table of
  docs/architecture.md are defined in the code, so the table is renamed
  with the code.
"""
from __future__ import annotations

import ast
import io
import os
import re
import subprocess
import tokenize
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
REQUIRED_DOCS = ("README.md", "bench/README.md", "docs/architecture.md")
MAX_TEXT_BYTES = 1 << 20

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_CODE_SPAN = re.compile(r"`+[^`\n]*`+")
_INLINE_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REF_LINK = re.compile(r"^\s{0,3}\[[^\]\n]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
_URL = re.compile(r"\b[a-zA-Z][\w+.-]*://\S+")
_PARENT_PATH = re.compile(r"(?<![\w.])((?:\.\./)+[\w./-]*)")
_MD_NAME = re.compile(r"(?<![\w/.-])((?:\.{1,2}/|/)?(?:[\w.-]+/)*[\w-][\w.-]*\.md)\b")
_SCHEME = re.compile(r"^[a-zA-Z][\w+.-]*:")


# --------------------------------------------------------------- the files
def repo_files() -> list[Path]:
    """Tracked files plus new ones git does not ignore (a file being added
    is checked before its commit)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], cwd=REPO, capture_output=True,
                             check=True).stdout.decode()
        names = [n for n in out.split("\0") if n]
    except (OSError, subprocess.CalledProcessError):     # not a git checkout
        names = []
        for d, dirs, files in os.walk(REPO):
            dirs[:] = [x for x in dirs if not x.startswith(".") and x != "__pycache__"]
            names += [os.path.relpath(os.path.join(d, f), REPO) for f in files]
    return sorted(REPO / n for n in names if (REPO / n).is_file())


def markdown_files() -> list[Path]:
    return [p for p in repo_files() if p.suffix == ".md"]


def read_text(path: Path) -> str | None:
    if path.stat().st_size > MAX_TEXT_BYTES:
        return None
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None


# ------------------------------------------------------------ markdown links
def markdown_links(text: str) -> list[str]:
    """Link targets of inline and reference links outside code."""
    prose = _FENCE.sub("", text)
    prose = _CODE_SPAN.sub("code", prose)
    return _INLINE_LINK.findall(prose) + _REF_LINK.findall(prose)


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors for the headings of a Markdown text."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for line in _FENCE.sub("", text).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).replace("`", "").lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def inside_repo(path: Path) -> bool:
    try:
        path.resolve().relative_to(REPO)
        return True
    except ValueError:
        return False


def link_problem(doc: Path, target: str) -> str | None:
    """Why ``target`` (a link in ``doc``) is broken, or None."""
    if _SCHEME.match(target):
        return None                      # a URL (https:, mailto:): not a repository path
    path_part, _, anchor = target.partition("#")
    dest = doc if not path_part else (doc.parent / path_part)
    if path_part.startswith("/") or not inside_repo(dest):
        return f"{target!r} leaves the repository"
    if not dest.exists():
        return f"{target!r} does not exist"
    if anchor and dest.suffix == ".md" and anchor not in heading_anchors(dest.read_text()):
        return f"{target!r}: {dest.name} has no heading with anchor #{anchor}"
    return None


def test_the_main_documents_exist():
    for name in REQUIRED_DOCS:
        assert (REPO / name).is_file(), f"{name} is missing"
    assert {REPO / n for n in REQUIRED_DOCS} <= set(markdown_files())


@pytest.mark.parametrize("doc", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_markdown_links_resolve_inside_the_repository(doc):
    problems = [p for t in markdown_links(doc.read_text()) if (p := link_problem(doc, t))]
    assert not problems, f"{doc.relative_to(REPO)}: " + "; ".join(problems)


# -------------------------------------------- references in prose and code comments
def python_prose(source: str) -> list[str]:
    """Docstrings and comments of a Python source (what is written for readers)."""
    out = []
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return [source]
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                out.append(doc)
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                out.append(tok.string)
    except (tokenize.TokenError, SyntaxError):
        pass
    return out


def reference_problems(where: Path, text: str) -> list[str]:
    """Parent-directory paths leaving the repository, and ``.md`` names the
    repository lacks, in a piece of prose found in ``where``."""
    text = _URL.sub("", text)
    problems = []
    for ref in _PARENT_PATH.findall(text):
        if not inside_repo(where.parent / ref):
            problems.append(f"{ref!r} leaves the repository")
    for ref in _MD_NAME.findall(text):
        if ref.startswith("/"):
            problems.append(f"{ref!r} is outside the repository")
            continue
        candidates = [where.parent / ref, REPO / ref]
        if not any(inside_repo(c) and c.is_file() for c in candidates):
            problems.append(f"{ref!r} is not a file of the repository")
    return problems


def prose_of(path: Path) -> list[str]:
    text = read_text(path)
    if text is None:
        return []
    return python_prose(text) if path.suffix == ".py" else [text]


def test_no_document_docstring_or_comment_points_outside_the_repository():
    problems = []
    for path in repo_files():
        for piece in prose_of(path):
            problems += [f"{path.relative_to(REPO)}: {p}" for p in reference_problems(path, piece)]
    assert not problems, "\n".join(problems)


def test_the_checker_sees_what_a_clone_lacks():
    """The checks above would catch the references this test guards against."""
    readme = REPO / "README.md"
    assert link_problem(readme, "../shared/DESIGN.md") is not None
    assert link_problem(readme, "docs/missing.md") is not None
    assert link_problem(readme, "docs/architecture.md#no-such-heading") is not None
    assert link_problem(readme, "docs/architecture.md#processes") is None
    assert link_problem(readme, "https://example.org/x.md") is None
    module = REPO / "gdfut" / "api.py"
    assert reference_problems(module, "see shared/bench/WORKLOADS.md")
    assert reference_problems(module, "see DESIGN.md, the map")
    assert reference_problems(module, "copied from " + "../" * 3 + "elsewhere")
    assert not reference_problems(module, "see bench/README.md and docs/architecture.md")
    assert markdown_links("[a](x.md) `[b](y.md)` [c]: z.md") == ["x.md"]
    prose = python_prose('"""Doc: a.md"""\nx = "b.md"  # c.md\n')
    assert prose == ["Doc: a.md", "# c.md"]


# ------------------------------------------- the decision table names real code
def defined_names() -> tuple[set[str], dict[str, set[str]]]:
    """Names defined in the package (classes, functions, assigned names at any
    level) and, per class, the names defined in its body."""
    names: set[str] = set()
    members: dict[str, set[str]] = {}
    for path in repo_files():
        if path.suffix != ".py" or path.parts[len(REPO.parts)] not in ("gdfut", "kernels"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names.update(_names_defined_by(node))
            if isinstance(node, ast.ClassDef):
                body = members.setdefault(node.name, set())
                for child in node.body:
                    body.update(_names_defined_by(child))
    return names, members


def _names_defined_by(node) -> set[str]:
    if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        return {node.name}
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return {t.id for t in targets if isinstance(t, ast.Name)}
    return set()


def decision_table_tokens() -> list[str]:
    """The backquoted names in the "module: function or class" column."""
    text = (REPO / "docs" / "architecture.md").read_text()
    section = text.split("## Where each decision lives", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines()
            if line.startswith("|") and not re.match(r"^\|[-| ]+\|$", line)]
    tokens = []
    for row in rows[1:]:                 # rows[0] is the header
        tokens += re.findall(r"`([^`]+)`", row.split("|")[2])
    return tokens


def test_the_decision_table_names_code_that_exists():
    names, members = defined_names()
    tokens = decision_table_tokens()
    assert "ReferenceTable" in tokens and "prune_sessions" in tokens, "table not found"
    missing = []
    for token in tokens:
        if token.endswith(".py"):
            found = any((REPO / base / token).is_file() for base in ("", "gdfut"))
        elif "." in token:
            cls, attr = token.rsplit(".", 1)
            found = attr in members.get(cls, set())
        else:
            found = token in names
        if not found:
            missing.append(token)
    assert not missing, f"docs/architecture.md names code that does not exist: {missing}"

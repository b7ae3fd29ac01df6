# The documentation site (docs/, Sphinx + furo + autodoc + MyST). Two checks need nothing but
# the source: the reference documents every name in reactor_mgmt.__all__, and the wire-protocol
# page names every error code the package can send. The third builds the whole site with
# warnings as errors, as `python -m sphinx -W` would in a release; it needs the `docs` extra
# (pip install -e '.[docs]') and is skipped, saying so, without it. CI does not install that
# extra, so there the build is skipped and the two source checks still run.
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from typing import Set

import pytest

import reactor_mgmt

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
REFERENCE = DOCS / "reference"
PROTOCOL = DOCS / "protocol.md"
PACKAGE_DIR = ROOT / "reactor_mgmt"

_AUTODOC = re.compile(r"^\.\. auto(?:class|function|data|exception|attribute)::\s+reactor_mgmt\.(\w+)\s*$", re.M)
# Where the package names an error code: CommandError(..., code="x"), a class's `code = "x"`,
# error_reply(reply_id, "x", ...) and a JSON error object built by hand ({"code": "x", ...}).
_CODE_PATTERNS = [
    re.compile(r"""\bcode\s*=\s*["'](\w+)["']"""),
    re.compile(r"""\berror_reply\([^,()]+,\s*["'](\w+)["']"""),
    re.compile(r"""\b_write_error\((?:[^,()]+,\s*){3}["'](\w+)["']"""),  # (dispatcher, conn, id, code, ...)
    re.compile(r"""["']code["']\s*:\s*["'](\w+)["']"""),
]


def documented_names() -> Set[str]:
    names: Set[str] = set()
    for page in REFERENCE.glob("*.rst"):
        names.update(_AUTODOC.findall(page.read_text(encoding="utf-8")))
    return names


def error_codes() -> Set[str]:
    codes: Set[str] = set()
    for path in PACKAGE_DIR.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for pattern in _CODE_PATTERNS:
            codes.update(pattern.findall(text))
    return codes


def test_the_reference_documents_every_public_name():
    documented = documented_names()
    missing = sorted(set(reactor_mgmt.__all__) - documented)
    assert not missing, (
        f"reactor_mgmt.__all__ names missing from docs/reference/*.rst: {missing}; add an "
        "autoclass/autofunction/autodata/autoexception directive for each"
    )
    stale = sorted(documented - set(reactor_mgmt.__all__))
    assert not stale, f"docs/reference documents names that are not public (not in __all__): {stale}"


def test_the_protocol_page_names_every_error_code():
    codes = error_codes()
    # The scan must see the codes everyone relies on, or it has stopped finding them.
    assert {
        "usage",
        "unknown_command",
        "denied",
        "bad_request",
        "too_long",
        "too_large",
        "timeout",
        "shutdown",
        "internal",
        "error",
    } <= codes, sorted(codes)
    text = PROTOCOL.read_text(encoding="utf-8")
    table = text[text.index("## Error codes") :]
    table = table[: table.index("\n## ", 1)]
    missing = sorted(code for code in codes if f"| `{code}` |" not in table)
    assert not missing, (
        f"error codes the package sends but docs/protocol.md's 'Error codes' table does not describe: {missing}"
    )


def test_the_protocol_pages_builtin_table_gives_each_builtins_usage_line():
    # The table is what a client author reads; help's usage lines are what a person at nc reads.
    # They disagreed (`watch SECONDS COMMAND...` in the table, `watch SECONDS [COMMAND...]` in help).
    text = PROTOCOL.read_text(encoding="utf-8")
    table = text[text.index("## Builtin commands") :]
    table = table[: table.index("\n## ", 1)]
    documented = {}
    for row in table.splitlines():
        if row.startswith("| `"):
            for form in re.findall(r"`([^`]+)`", row.split(" | ")[0]):
                words = form.split()
                name = " ".join(word for word in words if word.isidentifier() and word.islower())
                documented[name] = form
    server = reactor_mgmt.Server("127.0.0.1", 0, token="t", log_tail=True)
    try:
        usages = {name: command.usage for name, command in server.registry.commands.items()}
    finally:
        server.close()
    assert sorted(documented) == sorted(usages), "the table lists other commands than the builtins"
    assert documented == usages


def test_the_changelog_is_in_the_site_and_names_this_version():
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "## [Unreleased]" in changelog
    assert f"## [{reactor_mgmt.__version__}]" in changelog, "CHANGELOG.md has no entry for __version__"
    assert "../CHANGELOG.md" in (DOCS / "changelog.md").read_text(encoding="utf-8")


def _missing_doc_tools() -> str:
    return ", ".join(name for name in ("sphinx", "furo", "myst_parser") if importlib.util.find_spec(name) is None)


def test_the_site_builds_with_warnings_as_errors(tmp_path):
    missing = _missing_doc_tools()
    if missing:
        pytest.skip(f"the docs build needs the `docs` extra ({missing} not installed): pip install -e '.[docs]'")
    out = tmp_path / "html"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-E",
            "-q",
            "-b",
            "html",
            "-d",
            str(tmp_path / "doctrees"),
            str(DOCS),
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )  # under the suite's 120 s per test
    assert proc.returncode == 0, f"sphinx-build -W failed:\n{proc.stdout}\n{proc.stderr}"
    for page in (
        "index",
        "tutorial",
        "protocol",
        "changelog",
        "howto/index",
        "howto/security",
        "howto/deployment",
        "howto/select-daemon",
        "howto/game-loop",
        "howto/asyncio",
        "howto/thread",
        "howto/tk",
        "howto/qt",
        "howto/pygame",
        "howto/curses",
        "reference/index",
    ):
        assert (out / f"{page}.html").is_file(), page
    # autodoc rendered every public name (an import failure would only leave it out).
    html = "".join(page.read_text(encoding="utf-8") for page in (out / "reference").glob("*.html"))
    missing_ids = [name for name in reactor_mgmt.__all__ if f'id="reactor_mgmt.{name}"' not in html]
    assert not missing_ids, f"names with no entry in the built reference: {missing_ids}"
    assert "Unreleased" in (out / "changelog.html").read_text(encoding="utf-8")

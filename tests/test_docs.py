"""The README and docs/ point only at things that exist: every relative markdown link, and every
repository path written as code (`configs/x.yaml`, `tools/x.py`, `docs/x.md`, in inline code
or in a fenced block), resolves to a file or folder of the repository."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP = ("backbone", "configs", "detect", "docs", "examples", "proposals", "tests", "tools")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
SPAN = re.compile(r"`([^`\n]+)`")
# A path starts a word (not after '/', '$', ':' or a letter: runs/x/configs/..., $W/..., and
# git's REV:path name other places) at a top-level folder and ends in a file extension or '/'.
PATH = re.compile(r"(?<![\w./$:-])(?:%s)/[\w./-]*" % "|".join(TOP))
FILE_OR_FOLDER = re.compile(r"(\.(py|yaml|md|json|txt|jpg|png|toml|sh)|/)$")
PLACEHOLDER = re.compile(r"(^|/)[A-Z][A-Z_]+(\.|/|$)")  # tools/bench/NAME.py stands for any benchmark


def doc_files(root: Path = ROOT) -> list[Path]:
    """README.md, every docs/*.md page and the READMEs under tools/."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md")),
            *sorted((root / "tools").rglob("README.md"))]


def broken_links(text: str, page: Path, root: Path) -> list[str]:
    """Relative link targets of a markdown `text` (at `page`) that do not exist under `root`."""
    bad = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a web address, mail address or an anchor in the same page
        path = (page.parent / target.split("#")[0]).resolve()
        if root.resolve() not in (path, *path.parents) or not path.exists():
            bad.append(target)
    return bad


def code_paths(text: str) -> list[str]:
    """Repository paths written as code: in `inline code` or in ``` fenced blocks."""
    code = [m.group(0) for m in FENCE.finditer(text)]
    code += SPAN.findall(FENCE.sub("", text))
    found = [p.rstrip(".,") for chunk in code for p in PATH.findall(chunk)]
    return [p for p in found if FILE_OR_FOLDER.search(p) and not PLACEHOLDER.search(p)]


def missing_paths(text: str, root: Path) -> list[str]:
    """Repository paths written as code in `text` that are not files or folders under `root`."""
    return [p for p in code_paths(text) if not (root / p).exists()]


def test_checker_finds_a_bad_link_and_a_bad_path(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "configs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("x")
    (tmp_path / "configs" / "good.yaml").write_text("x")
    page = tmp_path / "docs" / "b.md"
    text = ("[ok](a.md) [ok](a.md#part) [web](https://example.org) [anchor](#top) [bad](missing.md)\n"
            "[up](../configs/good.yaml) [outside](../../etc/passwd) ![pic](images/none.png)\n"
            "Run `detect train --config configs/good.yaml` then `configs/bad.yaml`; "
            "`runs/x/configs/skipped.yaml`, `git show abc123:tools/gone.py` and `$W/tools/y.py` "
            "name other places. Plain configs/prose.yaml is not code.\n"
            "```\npython tools/missing.py --config configs/good.yaml\n```\n")
    assert broken_links(text, page, tmp_path) == ["missing.md", "../../etc/passwd", "images/none.png"]
    assert code_paths(text) == ["tools/missing.py", "configs/good.yaml", "configs/good.yaml",
                                "configs/bad.yaml"]
    assert missing_paths(text, tmp_path) == ["tools/missing.py", "configs/bad.yaml"]


def test_checker_accepts_folders_and_test_ids(tmp_path):
    (tmp_path / "detect" / "default_model").mkdir(parents=True)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_a.py").write_text("x")
    (tmp_path / "tools" / "bench").mkdir(parents=True)
    text = ("`detect/default_model/` and `tests/test_a.py::test_one` but not `detect/nothing/`; "
            "`python tools/bench/gone.py` (its folder exists, the file does not); `detect/cli` "
            "(a module name without an extension is not a path); `tools/bench/NAME.py` (a "
            "placeholder) and `examples/JPEGImages/x.jpg` (mixed case: a real name, missing)")
    assert missing_paths(text, tmp_path) == ["detect/nothing/", "tools/bench/gone.py",
                                             "examples/JPEGImages/x.jpg"]


@pytest.mark.parametrize("page", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_links_and_paths_in_the_docs_exist(page):
    text = page.read_text(encoding="utf-8")
    assert broken_links(text, page, ROOT) == [], f"{page.name}: links to nothing"
    assert missing_paths(text, ROOT) == [], f"{page.name}: names files that do not exist"


def test_the_readme_test_command_is_what_ci_runs():
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith(("#", "set ", "cd "))]
    readme = [line.strip() for line in (ROOT / "README.md").read_text().splitlines()]
    assert len(ci) == 1 and ci[0] in readme, "the README's test command differs from .ci/run"

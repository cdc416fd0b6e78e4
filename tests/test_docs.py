"""Docs that explain themselves (issue 29, item 5): the README, BENCHMARKS.md and docs/ cannot point nowhere.

- every relative markdown link (inline, image or reference-style) in README.md, BENCHMARKS.md and docs/*.md names
  an existing file, and a ``#anchor`` names a heading of that file (GitHub's slugs, duplicates numbered);
- every ``nemo-sew <command> ... --option`` in a code span or code block names a command (and a ``bench`` /
  ``prepare`` subcommand) and options that the real parser (:func:`nemo_sew.cli.build_parser`) has, and every
  ``python trt/build_engines.py --option`` (or ``trt/bench_engines.py``) an option that script's ``--help`` lists;
- README.md stays short (at most 160 lines);
- docs/cli.md equals what ``tools/gen_cli_docs.py`` writes now (``make docs`` regenerates it).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted([ROOT / "README.md", ROOT / "BENCHMARKS.md", *(ROOT / "docs").glob("*.md")])
README_MAX_LINES = 160
INTENTIONAL = {"--manfest"}
"""Options the docs name on purpose although no command has them: the mistyped option whose error message they show."""
SEPARATORS = {"|", "||", "&&", ";", "&", ">", ">>", "<", "2>&1", "2>", "then", "do", "done"}
SCRIPTS = ("trt/build_engines.py", "trt/bench_engines.py")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


# --- markdown structure --------------------------------------------------------------------------------------------

_FENCE = re.compile(r"^ {0,3}(```|~~~)")


def split_fences(text: str) -> tuple[list[str], list[str]]:
    """(prose lines with code blocks blanked, code-block lines)."""
    prose, code, fence = [], [], None
    for line in text.split("\n"):
        m = _FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)
            prose.append("")
        elif fence is not None and line.lstrip().startswith(fence):
            fence = None
            prose.append("")
        elif fence is not None:
            code.append(line)
            prose.append("")
        else:
            prose.append(line)
    return prose, code


_CODE_SPAN = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)", re.S)


def code_spans(prose: list[str]) -> list[str]:
    """Inline code spans, per paragraph (a span may wrap a line, not a blank line)."""
    out = []
    for para in "\n".join(prose).split("\n\n"):
        out += [m.group(2).replace("\n", " ").strip() for m in _CODE_SPAN.finditer(para)]
    return out


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: the rendered text, lower case, without punctuation, spaces as hyphens."""
    text = re.sub(r"`([^`]*)`", r"\1", heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@functools.cache
def anchors(path: Path) -> frozenset[str]:
    prose, _ = split_fences(path.read_text())
    seen: dict[str, int] = {}
    out = set()
    for line in prose:
        m = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
        out.update(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", line))
    return frozenset(out)


_INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REF_DEF = re.compile(r"^ {0,3}\[([^\]]+)\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
_REF_USE = re.compile(r"\[((?:[^\[\]]|\[[^\]]*\])+)\]\[([^\]]*)\]")


def links(path: Path) -> tuple[list[str], list[str]]:
    """(link targets, reference labels used but not defined) of one markdown file, code left out."""
    prose, _ = split_fences(path.read_text())
    text = _CODE_SPAN.sub("", "\n".join(prose))
    defs = {}
    for line in text.split("\n"):
        m = _REF_DEF.match(line)
        if m:
            defs[m.group(1).lower()] = m.group(2)
    targets = [m.group(1) for m in _INLINE_LINK.finditer(text)] + list(defs.values())
    undefined = [label for text_, ref in _REF_USE.findall(text) if (label := (ref or text_).lower()) not in defs]
    return targets, undefined


def link_problems(path: Path) -> list[str]:
    targets, undefined = links(path)
    problems = [f"{_rel(path)}: reference [{label}] is not defined" for label in undefined]
    for target in targets:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            problems.append(f"{_rel(path)}: link {target!r}: {file_part} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{_rel(path)}: link {target!r}: no heading with the anchor #{anchor} in {_rel(dest)}")
    return problems


# --- commands ------------------------------------------------------------------------------------------------------


def code_commands(path: Path) -> list[str]:
    """Every code span and every logical line of every code block (``\\`` continuations joined)."""
    prose, code = split_fences(path.read_text())
    lines, buf = [], ""
    for line in code:
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        lines.append(buf + line)
        buf = ""
    if buf:
        lines.append(buf)
    return code_spans(prose) + lines


def tokens(text: str) -> list[str]:
    try:
        return shlex.split(text, comments=True)
    except ValueError:  # an unbalanced quote in prose-like code
        return re.sub(r"(^|\s)#.*", "", text).split()


def invocations(text: str, program) -> list[list[str]]:
    """The argument lists after each token for which ``program(token)`` is true, up to a shell separator."""
    toks = tokens(text)
    out = []
    for i, tok in enumerate(toks):
        if not program(tok):
            continue
        args = []
        for t in toks[i + 1 :]:
            if t in SEPARATORS:
                break
            if t.endswith(";"):
                args.append(t[:-1])
                break
            args.append(t)
        out.append(args)
    return out


def _is_nemo_sew(tok: str) -> bool:
    return tok == "nemo-sew" or tok.endswith("/nemo-sew")


def _option(tok: str) -> str | None:
    """The option a token names (``--x=1`` -> ``--x``; ``[--x`` -> ``--x``), or None for values, overrides, numbers."""
    tok = tok.strip("[](),.:;`'\"")
    if re.match(r"^--?[A-Za-z]", tok):
        return tok.split("=", 1)[0]
    return None


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return set(parser._option_string_actions)


_NAME = re.compile(r"[a-z][a-z0-9-]*")


def nemo_sew_problems(args: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """What in one ``nemo-sew ...`` argument list the parser would not accept (command, subcommand, options)."""
    known = _options(parser)
    positional = [a for a in args if _option(a) is None]
    if not positional or not _NAME.fullmatch(positional[0]):
        # `nemo-sew --help`, or a placeholder such as `nemo-sew <command>`: only the options can be checked
        return _unknown(args, known, "")
    command = positional[0]
    commands = _subparsers(parser)
    if command not in commands:
        return [f"unknown command {command!r}"]
    cmd_parser = commands[command]
    known |= _options(cmd_parser)
    nested = _subparsers(cmd_parser)
    name = command
    if nested and len(positional) > 1 and _NAME.fullmatch(positional[1]):
        if positional[1] not in nested:
            return [f"unknown subcommand {command} {positional[1]!r}"]
        known |= _options(nested[positional[1]])
        name = f"{command} {positional[1]}"
    elif nested:  # `nemo-sew bench ... --write X`: a placeholder subcommand, any of theirs
        known |= set().union(*(_options(p) for p in nested.values()))
    return _unknown(args, known, f"{name}: ")


def _unknown(args: list[str], known: set[str], prefix: str) -> list[str]:
    return [f"{prefix}unknown option {o}" for a in args if (o := _option(a)) and o not in known | INTENTIONAL]


@functools.cache
def script_options(script: str) -> frozenset[str]:
    """The options a ``trt/`` script's ``--help`` lists (its parser is built inside ``main``; ``--help`` needs no
    TensorRT)."""
    out = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"{script} --help failed: {out.stderr[-2000:]}"
    return frozenset(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", out.stdout))


def command_problems(path: Path, parser: argparse.ArgumentParser) -> list[str]:
    problems = []
    for text in code_commands(path):
        if "nemo-sew" in text:
            for args in invocations(text, _is_nemo_sew):
                problems += [f"{_rel(path)}: `nemo-sew {' '.join(args)}`: {p}" for p in nemo_sew_problems(args, parser)]
        for script in SCRIPTS:
            if script in text:
                for args in invocations(text, lambda t, s=script: t.endswith(s)):
                    bad = [o for a in args if (o := _option(a)) and o not in script_options(script)]
                    problems += [f"{_rel(path)}: `{script} {' '.join(args)}`: unknown option {o}" for o in bad]
    return problems


@functools.cache
def cli_parser() -> argparse.ArgumentParser:
    from nemo_sew.cli import build_parser

    return build_parser()


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "tools" / "gen_cli_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the tests -----------------------------------------------------------------------------------------------------


def test_the_docs_exist():
    names = {p.name for p in DOCS}
    assert {"README.md", "BENCHMARKS.md", "cli.md", "benchmarks-archive.md"} <= names


@pytest.mark.parametrize("path", DOCS, ids=_rel)
def test_links_resolve(path):
    problems = link_problems(path)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", DOCS, ids=_rel)
def test_commands_name_real_options(path):
    problems = command_problems(path, cli_parser())
    assert not problems, "\n".join(problems)


def test_bench_subcommands_are_in_the_parser():
    """The check above sees `nemo-sew bench ...`: the entry-point subcommands are part of the parser it walks."""
    bench = _subparsers(cli_parser())["bench"]
    assert {"squeeze", "stochastic", "quant", "cpu"} <= set(_subparsers(bench))


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES}): move detail to docs/"


def test_cli_reference_is_current():
    generator = _load_generator()
    current = (ROOT / "docs" / "cli.md").read_text()
    written_by = re.search(r"argparse of Python (\d+\.\d+)", current)
    if written_by and written_by.group(1) != generator.python_version():
        pytest.skip(f"docs/cli.md is formatted by Python {written_by.group(1)}'s argparse, this is "
                    f"{generator.python_version()}: compared where CI runs it")  # fmt: skip
    generated = generator.render()
    assert current == generated, "docs/cli.md is stale: run `make docs` (tools/gen_cli_docs.py)"


# --- the checks catch what they are for ----------------------------------------------------------------------------


def test_a_broken_link_or_anchor_is_caught(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## A section\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n[ok](other.md#a-section) [gone](missing.md) [bad anchor](other.md#no-such) [self](#page)\n"
        "[ref][r] `[not a link](missing.md)`\n\n[r]: #nowhere\n\n```\n[in code](missing2.md)\n```\n"
    )
    problems = "\n".join(link_problems(page))
    assert "missing.md does not exist" in problems and "#no-such" in problems and "#nowhere" in problems
    assert "missing2.md" not in problems and "#a-section" not in problems and "#page" not in problems


def test_a_fake_option_or_command_is_caught(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "Run `nemo-sew evaluate m.nemo --manifest t.json --no-such-flag`, `nemo-sew evalute m.nemo`,\n"
        "`nemo-sew bench squeeze --factors 1 2 --fake-bench-flag` and `nemo-sew bench nonexistent`.\n\n"
        "```bash\nnemo-sew sweep m.nemo --manifest t.json --profiles p.yaml \\\n"
        "    --another-fake 1  # --in-a-comment\n"
        "make demo --not-ours\nnemo-sew demo --out x && ls --all\n```\n"
    )
    problems = "\n".join(command_problems(page, cli_parser()))
    for expected in ("--no-such-flag", "'evalute'", "--fake-bench-flag", "'nonexistent'", "--another-fake"):
        assert expected in problems
    for fine in ("--in-a-comment", "--not-ours", "--all", "--manifest", "--factors", "--out"):
        assert f"option {fine}\n" not in problems + "\n"

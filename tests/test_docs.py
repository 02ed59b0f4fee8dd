"""The docs cannot drift from the code: every ``superclip ...`` command in a fenced shell block of the README or
docs/ names a subcommand and flags the parser has, and every relative link or image resolves (file and anchor).

A command line that is only an illustration (a flag of another tool, a made-up one) is marked with
``# docs-test: skip`` at its end."""
from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

from superclip.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
SKIP = "docs-test: skip"
SHELL_LANGS = {"bash", "sh", "shell", "console", "zsh"}


def doc_files() -> List[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def shell_lines(text: str) -> Iterator[Tuple[int, str]]:
    """(line number, command) of every command in fenced shell blocks; ``\\`` continuations joined."""
    lang, pending, start = None, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"^\s*```(\w*)", line)
        if fence:
            lang = None if lang is not None else fence.group(1) or ""
            continue
        if lang not in SHELL_LANGS:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\") and "#" not in line:
            pending += line.rstrip()[:-1] + " "
            continue
        yield start, pending + line
        pending = ""


def inline_commands(text: str) -> Iterator[Tuple[int, str]]:
    """(line number, command) of every inline code span outside fenced blocks that starts with ``superclip ``."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if re.match(r"^\s*```", line):
            fenced = not fenced
        elif not fenced:
            for span in re.findall(r"`(superclip [^`]+)`", line):
                if not re.match(r"superclip [\w ]+: ", span):  # a message the command prints, not a command
                    yield number, span


def commands(text: str) -> List[Tuple[int, str]]:
    return [*shell_lines(text), *inline_commands(text)]


def _subparsers(parser) -> Dict[str, object]:
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            return action.choices
    return {}


def check_command(line: str, parser=None) -> List[str]:
    """What is wrong with one shell line's ``superclip`` invocation (empty if nothing, or if it has none)."""
    if SKIP in line:
        return []
    try:
        words = shlex.split(line, comments=True)
    except ValueError as e:
        return [f"cannot split: {e}"]
    for program in ("superclip", "superclip.cli"):  # `superclip ...`, `python -m superclip ...`, torchrun's
        if program in words:
            words = words[words.index(program) + 1:]
            words = words[1:] if words[:1] == ["--"] else words
            break
    else:
        return []
    parser = parser or build_parser()
    problems, flags = [], dict(parser._option_string_actions)
    node = parser
    # the subcommand path: plain words naming a subparser, one level after another
    while words and _subparsers(node):
        name = words[0]
        if name.startswith("-") and name in flags:  # a global flag (--debug) before the subcommand
            words = words[1:]
            continue
        choices = _subparsers(node)
        if name not in choices:
            return [f"unknown subcommand {name!r} (known: {', '.join(choices)})"]
        node, words = choices[name], words[1:]
        flags.update(node._option_string_actions)
    for word in words:
        for token in re.split(r"[\[\]|()]", word):
            flag = token.split("=", 1)[0]
            if re.fullmatch(r"--?[A-Za-z][\w-]*", flag) and flag not in flags:
                problems.append(f"unknown flag {flag} for superclip {node.prog.split(' ', 1)[-1]}")
    return problems


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation but '-' and '_' dropped, spaces to '-'."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, flags=re.M)}


def check_links(path: Path) -> List[str]:
    problems = []
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    for target in re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        file, _, fragment = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            problems.append(f"{target}: no such file")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            problems.append(f"{target}: no heading #{fragment} in {dest.name}")
    return problems


def test_docs_hold_commands():
    """The collector finds the README's and docs' commands (a test that found none would pass vacuously)."""
    fenced = [c for f in doc_files() for _, c in shell_lines(f.read_text()) if "superclip" in c]
    inline = [c for f in doc_files() for _, c in inline_commands(f.read_text())]
    assert len(fenced) >= 30 and len(inline) >= 5, (fenced, inline)


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_and_flag_exists(doc):
    parser = build_parser()
    problems = [f"{doc.name}:{n}: {p}: {c.strip()}" for n, c in commands(doc.read_text())
                for p in check_command(c, parser)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc):
    problems = check_links(doc)
    assert not problems, "\n".join(f"{doc.relative_to(ROOT)}: {p}" for p in problems)


def test_the_checker_catches_a_renamed_flag_a_subcommand_and_a_dead_link(tmp_path):
    parser = build_parser()
    assert check_command("superclip train --batch-size 8 --lr 1e-3", parser) == []
    assert check_command("superclip train --batch-sise 8", parser) == ["unknown flag --batch-sise for superclip train"]
    assert check_command("torchrun --nproc_per_node 2 -m superclip -- train --fsdp [--local-lost]", parser) == [
        "unknown flag --local-lost for superclip train"]
    assert check_command("superclip data synth --out d --familly scenes", parser) == [
        "unknown flag --familly for superclip data synth"]
    assert check_command("superclip evaluate --pretrained x", parser)[0].startswith("unknown subcommand 'evaluate'")
    assert check_command("superclip train --made-up 1  # docs-test: skip", parser) == []
    assert check_command("pip install -e '.[export]'", parser) == []
    doc = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("# A title, with `code`\n")
    doc.write_text("[ok](there.md#a-title-with-code) [gone](nowhere.md) [bad](there.md#nope) "
                   "![img](pic.png) [web](https://example.org)\n```bash\n[no](link.md)\n```\n")
    assert check_links(doc) == ["nowhere.md: no such file", "there.md#nope: no heading #nope in there.md",
                                "pic.png: no such file"]


def test_the_faults_table_lists_every_bad_input_case():
    """docs/faults.md's table is ``python -m tests.bad_inputs --write docs/faults.md``'s: one row per case."""
    from .bad_inputs import CASES

    text = (ROOT / "docs" / "faults.md").read_text()
    rows = {tuple(cell.strip() for cell in row.split("|")[1:3])
            for row in re.findall(r"^\|[^\n]+\|$", text, flags=re.M) if "`" in row}
    assert rows == {(c.command, c.what.replace("|", "\\|")) for c in CASES}


def config_files_named(text: str) -> List[str]:
    """The ``--config FILE`` of every superclip command in ``text`` (a doc's fenced and inline commands)."""
    out = []
    for _, line in commands(text):
        if SKIP in line:
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        out += [words[i + 1] for i, w in enumerate(words[:-1]) if w == "--config"]
        out += [w.split("=", 1)[1] for w in words if w.startswith("--config=")]
    return out


def test_every_config_file_the_docs_name_is_shipped_and_loads():
    """A ``--config`` in the README or docs names a YAML of this repository (from its root) that loads into a
    training config (unknown keys and bad values fail here). docs/training.md named
    superclip_vit_b16_s512m_bs16k.yaml, which no one could find: it was not shipped."""
    from superclip.config import load_yaml, make_config

    named = {(f.relative_to(ROOT), c) for f in doc_files() for c in config_files_named(f.read_text())}
    assert named, "no --config in the docs: the check would pass vacuously"
    for doc, name in sorted(named):
        path = ROOT / name
        assert path.is_file(), f"{doc}: --config {name}: not in the repository"
        cfg = make_config(load_yaml(str(path)), {"train_data": "/data/{00000..00009}.tar"})
        assert cfg.model and cfg.train_num_samples, (doc, name)
    for shipped in sorted((ROOT / "configs").glob("*.yaml")):  # and every shipped recipe loads
        make_config(load_yaml(str(shipped)), {})

"""The README's address table is the protocol table, and the README's test command is CI's."""

from __future__ import annotations

import re

from helpers import REPO

from bridge.protocol import markdown_table


def test_readme_address_table_matches_protocol() -> None:
    text = (REPO / "README.md").read_text()
    match = re.search(r"<!-- protocol-table:start -->\n(.*?)\n<!-- protocol-table:end -->", text, re.S)
    assert match, "README lacks the protocol table markers"
    assert match.group(1) == markdown_table(), "README table drifted: paste `genbridge protocol` output"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "\nmake test\n" in readme
    assert "\nmake test\n" in ci


def test_readme_example_config_is_valid_and_matches_the_defaults() -> None:
    import tomllib

    from bridge.config import config_from_mapping, load_config

    text = (REPO / "README.md").read_text()
    blocks = [b for b in re.findall(r"```toml\n(.*?)```", text, re.S) if "[server]" in b]
    assert blocks, "README lacks the full example config"
    example = config_from_mapping(tomllib.loads(blocks[0]))
    defaults = load_config(None)
    for section in ("server", "output", "audio", "engine", "finishing"):
        assert getattr(example, section) == getattr(defaults, section), f"[{section}] in the README drifted"

"""Config: defaults, overrides, and one clear error naming the key with exit code 2."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
from helpers import GENBRIDGE, REPO

from bridge.config import ConfigError, apply_overrides, config_from_mapping, load_config


def _serve(tmp_path: Path, toml: str, *extra: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml)
    return subprocess.run([*GENBRIDGE, "serve", "--config", str(cfg), "--out", str(tmp_path / "o"), *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("toml, key", [
    ('[server]\nosc_port = "abc"\n', "server.osc_port"),
    ("[server]\nosc_port = 70000\n", "server.osc_port"),
    ("[engine]\nthreads_per_worker = 2\n", "engine.threads_per_worker"),
    ('[engine]\ndry_policy = "panic"\n', "engine.dry_policy"),
    ('[instruments.kick]\nmodel = "nope"\n', "instruments.kick.model"),
    ('[models.default]\npath = "/no/such/model"\n', "models.default.path"),
    ("[instruments.kick]\npool = -1\n", "instruments.kick.pool"),
    ("[finishing]\nenabled = 1\n", "finishing.enabled"),
    ('[output]\nsubtype = "MP3"\n', "output.subtype"),
    ("server = 3\n", "server"),
    ("[engine]\nvelocity_bands = [40, 128]\n", "engine.velocity_bands[1]"),
    ("[engine]\nvelocity_bands = [80, 80]\n", "engine.velocity_bands"),
    ('[engine]\nvelocity_bands = ["soft"]\n', "engine.velocity_bands[0]"),
])
def test_invalid_config_names_the_key_and_exits_2(tmp_path: Path, toml: str, key: str) -> None:
    result = _serve(tmp_path, toml)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert f"config error: {key}:" in lines[0]


def test_not_toml_and_missing_file_exit_2(tmp_path: Path) -> None:
    result = _serve(tmp_path, "[server\nport=")
    assert result.returncode == 2 and "not valid TOML" in result.stderr
    result = subprocess.run([*GENBRIDGE, "serve", "--config", str(tmp_path / "none.toml")], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "not found" in result.stderr


def test_taken_port_is_a_clear_error_exit_1(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        result = _serve(tmp_path, "", "--osc-port", str(port))
    assert result.returncode == 1
    assert f"cannot listen for OSC on udp 127.0.0.1:{port}" in result.stderr


def test_defaults_and_overrides() -> None:
    config = load_config(None)
    assert (config.server.host, config.server.osc_port) == ("127.0.0.1", 9000)
    assert list(config.instruments) == ["kick", "snare", "hat", "open_hat", "clap", "tom", "rim", "crash", "ride"]
    assert config.models["default"].resolved_path() == REPO / "models" / "default"
    assert config.engine.velocity_bands == [40, 80, 120]
    apply_overrides(config, host="0.0.0.0", osc_port=9100, out="/tmp/x", audio_device="none")
    assert (config.server.host, config.server.osc_port, config.output.dir) == ("0.0.0.0", 9100, "/tmp/x")
    with pytest.raises(ConfigError, match="server.osc_port"):
        apply_overrides(config, osc_port=0)


def test_the_default_kit_chokes_the_open_hat_with_the_closed_and_maps_gm_notes() -> None:
    """No [instruments]: nine pads, the hats in one choke group (a closed hat cuts a ringing open
    one); a config that lists its instruments gets those alone, unchoked unless it says so."""
    config = load_config(None)
    groups = {name: inst.choke_group for name, inst in config.instruments.items()}
    assert groups["hat"] == groups["open_hat"] != 0
    assert all(group == 0 for name, group in groups.items() if name not in ("hat", "open_hat"))
    assert all(inst.model == "default" and inst.pool == 4 for inst in config.instruments.values())
    notes = config.midi.notes
    assert (notes["42"], notes["46"], notes["49"], notes["57"], notes["51"], notes["59"]) == (
        "hat", "open_hat", "crash", "crash", "ride", "ride")
    assert "52" not in notes and "55" not in notes
    assert set(notes.values()) <= set(config.instruments), "every GM note plays a default pad"
    listed = config_from_mapping({"instruments": {"kick": {}, "snare": {}, "hat": {}}})
    assert list(listed.instruments) == ["kick", "snare", "hat"]
    assert listed.instruments["hat"].choke_group == 0


def test_instruments_map_to_their_own_models(tiny_model: Path) -> None:
    config = config_from_mapping({
        "models": {"kicks": {"path": str(tiny_model)}, "snares": {"path": str(tiny_model), "steps": 8}},
        "instruments": {"kick": {"model": "kicks"}, "snare": {"model": "snares", "pool": 2}},
    })
    assert config.instruments["snare"].model == "snares" and config.instruments["snare"].pool == 2
    assert config.models["snares"].steps == 8 and config.instruments["kick"].pool == 4


@pytest.mark.parametrize("ceiling, budget", [(4000, 1000), (600, 256), (20000, 2048)])
def test_musicgen_takes_keep_their_kv_cache_within_the_workers_memory_ceiling(ceiling: int, budget: int) -> None:
    """A quarter of the MusicGen worker's ceiling (256 MB-2 GiB) is what one pass of takes may
    hold in KV cache: more takes go in further passes rather than get the worker killed."""
    from bridge.worker_handle import continuation_worker_spec

    config = config_from_mapping({"continuation": {"model": "x", "memory_limit_mb": ceiling}})
    spec = continuation_worker_spec(config)
    assert spec.memory_limit_mb == ceiling and spec.options["cache_budget_mb"] == budget

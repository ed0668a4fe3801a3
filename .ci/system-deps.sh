#!/usr/bin/env bash
# System packages the tests use as real peers: liblo-tools (oscsend/oscdump), sox, jackd2 +
# libportaudio2 (a real paced audio sink, JACK MIDI), puredata-core (the Pd patches, headless),
# chromium + chromium-driver (the web console, tested in a real browser, headless), fluidsynth +
# timgm6mb-soundfont (a GM soundfont's drum kit rendered at two velocities, tests/test_drum_sources.py). Installs only what is missing; needs root or sudo.
set -euo pipefail
need=()
command -v oscsend >/dev/null || need+=(liblo-tools)
command -v sox >/dev/null || need+=(sox)
command -v jackd >/dev/null || need+=(jackd2)
command -v pd >/dev/null || need+=(puredata-core)
ldconfig -p 2>/dev/null | grep -q libportaudio.so.2 || need+=(libportaudio2)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
command -v fluidsynth >/dev/null || need+=(fluidsynth)
[ -f /usr/share/sounds/sf2/TimGM6mb.sf2 ] || need+=(timgm6mb-soundfont)
[ ${#need[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
  echo "missing system packages: ${need[*]} (no apt-get here: install them with your package manager)" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing system packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null

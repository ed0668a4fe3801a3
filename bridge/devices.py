"""``genbridge devices``: what audio and MIDI ports this machine offers, or why there are none."""

from __future__ import annotations


def audio_devices() -> tuple[list[str], str | None]:
    try:
        import sounddevice as sd
    except OSError as exc:  # PortAudio library missing
        return [], f"PortAudio is not available ({exc}); install libportaudio2"
    try:
        devices = sd.query_devices()
    except Exception as exc:
        return [], f"cannot list audio devices: {exc}"
    lines = []
    for index, dev in enumerate(devices):
        lines.append(f"{index:3d}  {dev['name']}  (in {dev['max_input_channels']}, out "
                     f"{dev['max_output_channels']}, {dev['default_samplerate']:.0f} Hz)")
    return lines, None if lines else "no audio devices found (no sound card, and no JACK server running)"


def midi_ports() -> tuple[list[str], str | None]:
    try:
        import mido

        inputs = mido.get_input_names()
    except Exception as exc:  # rtmidi raises SystemError when /dev/snd/seq is missing
        return [], f"no MIDI: {exc} (no ALSA sequencer at /dev/snd/seq? start JACK for JACK MIDI)"
    return [f"in   {name}" for name in inputs], None if inputs else "no MIDI input ports"


def report() -> str:
    out = []
    for title, (lines, why) in (("Audio devices", audio_devices()), ("MIDI ports", midi_ports())):
        out.append(f"{title}:")
        out.extend(f"  {line}" for line in lines)
        if why:
            out.append(f"  {why}")
    return "\n".join(out)

"""genbridge: keep small generative audio models warm, turn OSC/MIDI triggers into new sound.

This package is the daemon (config, CLI, protocol, transports, engine, pools, sinks). It must
stay importable without torch: the I/O process never loads it; models run in worker processes.
"""

__version__ = "0.1.0"

"""Generators: the code that owns torch and turns (seed, steps) into audio.

Nothing here knows about OSC, MIDI or files announced to clients: the engine calls these
from a worker process and gets numpy arrays back.
"""

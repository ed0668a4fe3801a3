"""Where finished clips go: the shared folder now; the audio device mixer later."""

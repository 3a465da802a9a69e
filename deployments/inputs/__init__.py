"""What comes in: speech audio (decoded, checked and resampled to 16 kHz), the WebSocket's
input forwarder (audio and control events in order), and portraits (the persona store)."""

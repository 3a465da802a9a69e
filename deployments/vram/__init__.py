"""VRAM controller: API doc filled in below."""

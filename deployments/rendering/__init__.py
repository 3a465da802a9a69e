"""What a session renders with: one Backend interface (interface.py), implemented by a
pipeline in this process (local.py), a backend deployment (remote.py), and a backend under
the VRAM controller's lease (gated.py)."""

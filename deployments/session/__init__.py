"""Sessions, plain asyncio and no Ray: one session's clock and speech buffer (clock.py),
what every session shares, its input and viewers (base.py), when a video session renders
speech and how much a call carries (scheduler.py, pure functions), the render loop that
keeps video a little ahead of the wall clock (engine.py), the avatar3d session that sends
speech and lip-sync cues instead of frames (avatar3d.py), and one host's sessions with
their personas, VRAM seats and sweep (manager.py, under the SessionHost shim)."""

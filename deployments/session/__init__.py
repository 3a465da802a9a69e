"""Sessions, plain asyncio and no Ray: one session's clock and speech buffer (clock.py),
when it renders speech and how much a call carries (scheduler.py, pure functions), the
render loop that keeps video a little ahead of the wall clock (engine.py), and one host's
sessions with their personas, VRAM seats and sweep (manager.py, under the SessionHost shim)."""

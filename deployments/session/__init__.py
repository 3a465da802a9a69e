"""One session, plain asyncio and no Ray: its clock and speech buffer (clock.py) and the
render loop that keeps video a little ahead of the wall clock (engine.py)."""

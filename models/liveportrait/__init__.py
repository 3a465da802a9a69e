"""LivePortrait (human): our own networks and keypoint math, loading the official weights unchanged.

Public names (stable; the pipeline and Ditto build on them):

- `config`: `LivePortraitConfig` (official defaults; `.tiny()` for tests) and one
  dataclass per network.
- Networks, one per file, parameter names equal to the official checkpoints:
  `AppearanceFeatureExtractor` (F, image -> B×32×16×64×64 volume),
  `MotionExtractor` (M, image -> raw pose bins, t, exp, scale, kp),
  `WarpingNetwork` (W, volume + keypoints -> B×256×64×64),
  `SPADEGenerator` (G, -> B×3×512×512 in (0,1)),
  `StitchingRetargeting` (S: `.stitching`, `.lip`, `.eye` MLPs).
- `loading`: the official `WeightFile`s, `weight_files()`, `load_<network>(config, file, mode)`,
  `load_into(module, file, adapt, mode)` for other files with the same keys (Ditto),
  and `LivePortraitNetworks` (all five, eval mode, one device/dtype; `.load()` from the
  HF cache, `.random(config)` for tests and benchmarks).
- `keypoints`: `refine_kp_info`, `headpose_pred_to_degree`, `get_rotation_matrix`,
  `transform_keypoint`, `relative_motion`, `motion_multiplier`, `expression_friendly`,
  `stitching`, `retarget_eye`, `retarget_lip`, `eye_close_ratio`, `lip_close_ratio`,
  `combined_eye_ratio`, `combined_lip_ratio`, `apply_driving_multiplier`.

Importing this package imports no torch: import the submodules you need.
"""

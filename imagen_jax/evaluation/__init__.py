"""Evaluation: FID Inception features, FID, the COCO FID-30K harness, CLIP score, caption
alignment.

Modules: `inception` (Flax FID InceptionV3 + weights + clean resize), `fid` (statistics and
Fréchet distance), `coco_fid` (the resumable, host-sharded COCO protocol), `clip_score`
(CLIP score, ×100 of max(cos, 0), with any CLIP), `curve` (CLIP score beside FID; the
FID-vs-CLIP-score curve), `alignment` (shapes-world caption alignment), `evaluators`
(`EVALUATORS` for `config.evals`). Nothing is imported here, so `import imagen_jax.evaluation`
stays cheap; see docs/evaluation.md.
"""

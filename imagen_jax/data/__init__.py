"""Training data for every cascade stage.

Modules (import them directly; this package imports nothing on its own):
  shapes          the embedded procedural shapes world (sample_scene, caption,
                  render, score) with a held-out split;
  shapes_world    the shapes world's types, constants and shape geometry
                  (re-exported by `shapes`; shared with the scorer);
  shapes_score    the colour-segmentation scorer behind `shapes.score`;
  preprocess      image decoding and per-stage resize/crop/low-res pairs;
  sources         shapes and TFDS sources; folder_source: folders, COCO json;
  input_pipeline  create_input_iterator(...): sharded, resumable batches.
"""

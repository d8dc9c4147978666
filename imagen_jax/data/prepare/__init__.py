"""Converting image-caption data into TFDS-format ArrayRecord datasets.

What `scripts/prepare_data.py` runs; the result trains with
`--config.input.dataset=tfds:NAME --config.input.data_dir=DIR` and no field
flags. Modules (import them directly; this package imports nothing on its
own):
  readers  the sources, read lazily as (key, image bytes, captions): COCO
           captions json + images, a captioned folder, webdataset tars;
  images   validation of each image (decoded), kept as is or re-encoded;
  writer   the TFDS layout: ArrayRecord shards, per-shard done files,
           dataset_info.json / features.json;
  convert  prepare(...): one output shard or all, resumable, with counts.
"""

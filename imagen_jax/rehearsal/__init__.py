"""The pod workflow rehearsed on one machine, offline (scripts/rehearse_pod.py).

`gcloud_stand_in`: a `gcloud` that runs each TPU worker's remote command as a local process;
`world`: the user's downloads, made locally (a COCO-format dataset, a Hugging Face T5 with a
SentencePiece tokenizer, pytorch-fid Inception weights), all with random content;
`run`: the phases, their checks and `rehearsal.json`.
"""

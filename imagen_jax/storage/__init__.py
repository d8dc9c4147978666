"""Where files live: local paths and `gs://` (etils.epath over gcsfs; Orbax over tensorstore).

`paths`: remote-aware helpers (is_remote, local copies of remote files and folders, atomic
writes). `emulator`: a local GCS API server (fake-gcs-server) for tests and the rehearsal.
"""

"""lmsprint.data: where documents come from (sources.py, which owns the dataset names), tokenizers (tokenizer.py),
encoding in worker processes (encode.py), the cached, resumable prepare (prepare.py) and its manifest
(manifest.py), and batches read from the prepared token files (loader.py)."""

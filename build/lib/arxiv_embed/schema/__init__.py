"""The params schema, one part per params.yaml section: each stage imports only the parts it reads
(arxiv_embed/params.py validates the whole file), so a new key reruns only the stages of its section."""

"""Semantic search over papers with the fine-tuned model: index, CLI and HTTP service."""

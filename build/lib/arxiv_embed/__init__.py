"""arxiv-embed: the library the DAG stages in stages/ share."""

"""Reports (Markdown + HTML) built only from stored outputs."""

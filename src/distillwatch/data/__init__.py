"""Small data files shipped with the package (see SAMPLE_SOURCES.md)."""

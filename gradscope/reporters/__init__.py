"""Reporters render a report (findings and per-layer statistics) for a reader: the terminal,
markdown, JUnit XML, GitHub Actions annotations. They read reports; nothing flows back."""

"""Reporters render a report (findings and per-layer statistics) for a reader: the terminal,
markdown, JUnit XML, GitHub Actions annotations. They read reports; nothing flows back."""


def fix_blocks(fix: str) -> list[tuple[bool, str]]:
    r"""A finding's fix as (is code, text) blocks in their order: prose lines as paragraphs
    (split at blank lines), lines indented by four spaces as code (the indent removed).

    >>> fix_blocks("Re-initialise:\n    reinit(model)\nor add skips.")
    [(False, 'Re-initialise:'), (True, 'reinit(model)'), (False, 'or add skips.')]
    """
    out, block, code = [], [], False
    for line in fix.splitlines() + [""]:
        is_code = line.startswith("    ")
        if block and (is_code != code or line == ""):
            out.append((code, "\n".join(block)))
            block = []
        if line:
            block.append(line[4:] if is_code else line)
            code = is_code
    return out

"""Report helpers. The colon missing after the signature is deliberate."""


def render_report(rows)
    return "\n".join(str(row) for row in rows)

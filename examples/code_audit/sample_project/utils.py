"""Small helpers of the sample service."""


def chunks(items: list[int], size: int) -> list[list[int]]:
    # FIXME: a size of zero makes range() raise; validate it with a clear message
    return [items[i : i + size] for i in range(0, len(items), size)]


def slugify(text: str) -> str:
    # HACK: only correct for ASCII titles
    return "-".join(text.lower().split())


def send(payload: bytes, access_key_id: str) -> int:
    return len(payload) + len(access_key_id)


def upload(payload: bytes) -> int:
    # XXX the key below is AWS's documented fake shape, planted for the audit
    return send(payload, access_key_id="AKIAEXAMPLEFAKE00000")

"""User-facing errors: the CLI prints their message (which names the fix) without a traceback."""


def cause(e: BaseException, limit: int = 200) -> str:
    """"<type>: <first line of its message>" (cut at `limit` characters): a library's reason inside one line of ours."""
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:limit]}"


class SynthTLError(Exception):
    """Base class for errors caused by input the user can fix."""


class ConfigError(SynthTLError):
    """A config key or value is wrong; the message names the field."""


class DataError(SynthTLError):
    """A dataset, split file or image cannot be used as asked."""


class BadImageError(DataError):
    """An image file cannot be decoded."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"cannot read image {path}: {reason}. Remove or replace the file, or set "
                         "data.on_bad_image=skip to skip unreadable images (a run counts them in result.json, a style "
                         "in style.json).")
        self.path = path
        self.reason = reason

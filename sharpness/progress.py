"""Progress bars that can be turned off: ``progress=None`` shows one only on a terminal."""

from __future__ import annotations

from tqdm.auto import tqdm

__all__ = ["progress_bar"]


def progress_bar(progress: bool | None, **kwargs) -> tqdm:
    """A tqdm bar; ``progress`` True/False forces it on/off, None lets tqdm decide (terminal only)."""
    return tqdm(disable=None if progress is None else not progress, **kwargs)

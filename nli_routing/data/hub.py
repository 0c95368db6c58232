"""Loading from the Hugging Face Hub with an error that says what to pass instead when it fails."""

from __future__ import annotations

from typing import Any

import datasets


def load_from_hub(hub_id: str, instead: str, **kwargs: Any):
    """``datasets.load_dataset(hub_id, **kwargs)``; any failure (offline, no cache, connection)
    becomes a :class:`ConnectionError` naming ``hub_id``, the cause and ``instead`` (the local files
    the caller accepts)."""
    try:
        return datasets.load_dataset(hub_id, **kwargs)
    except Exception as err:
        raise ConnectionError(
            f"could not load {hub_id!r} from the Hub ({type(err).__name__}: {err}); {instead}"
        ) from err

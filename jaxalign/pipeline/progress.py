"""Progress bars of the offline stages (tqdm on process 0, a no-op elsewhere or when disabled)."""

from __future__ import annotations

import jax


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


def progress(*, total: int, desc: str, unit: str, initial: int = 0, enabled: bool = True):
    """A tqdm bar (ETA and rate included), or a silent stand-in."""
    if not enabled or jax.process_index() != 0:
        return _Silent()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)

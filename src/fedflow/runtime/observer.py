"""Progress events from the runtime; the CLI renders them, the Python API ignores them."""

from __future__ import annotations

__all__ = ["Observer"]


class Observer:
    """Receives progress events. Every method is a no-op here; override what you display."""

    def phase(self, name: str) -> None:
        """A run phase begins (``starting sites``, ``handshake``, ``comparing`` …)."""

    def site(self, site: str, status: str, detail: str) -> None:
        """A site changed status (``starting``, ``started``, ``loaded``, ``ready``, ``failed``)."""

    def round_started(self, round: int) -> None:
        """A round was sent to every site."""

    def round_done(self, round: int, seconds: float, final: bool) -> None:
        """Every site answered and the coordinator aggregated; ``final`` when the app is done."""

    def transfer(self, what: str, done: int, total: int) -> None:
        """A file transfer to or from a site progressed (``what`` is ``site:file``)."""

    def message(self, text: str) -> None:
        """A note for the user (a warning, a step of a platform workflow)."""

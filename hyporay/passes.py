"""Image-pass accounting: one counter for every forward and backward pass the core spends.

An *image-pass* is one example through the model once. A forward on a batch of N examples adds N forward
passes; a backward through that batch's graph adds N backward passes (whether or not every row's gradient
is used). Attacks (``hyporay.attacks``), the training step (``hyporay.trainers``) and the evaluation
(``hyporay.metrics``) report what they spend through ``add``; ``counting`` collects it::

    >>> with counting() as spent:
    ...     x_adv = pgd(model, x, y, eps=0.1, step_size=0.025, steps=10)
    >>> spent.forward, spent.backward          # 10·N each (no final forward without best_iterate)

Counters nest: an epoch's counter inside a trial's counter both see every pass. ``add`` with no counter
open does nothing (a few Python operations), and never reads a tensor back from the device.
"""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass
class Passes:
    """Image-passes spent: ``forward`` and ``backward`` counts (integers)."""

    forward: int = 0
    backward: int = 0

    @property
    def total(self) -> int:
        return self.forward + self.backward

    def __add__(self, other: Passes) -> Passes:
        return Passes(self.forward + other.forward, self.backward + other.backward)


_OPEN: contextvars.ContextVar[tuple[Passes, ...]] = contextvars.ContextVar("hyporay_pass_counters", default=())


@contextlib.contextmanager
def counting() -> Iterator[Passes]:
    """Count the image-passes spent inside the block; yields the ``Passes`` it fills (final after the block)."""
    counter = Passes()
    token = _OPEN.set(_OPEN.get() + (counter,))
    try:
        yield counter
    finally:
        _OPEN.reset(token)


def add(forward: int = 0, backward: int = 0) -> None:
    """Record ``forward`` and ``backward`` image-passes in every open counter."""
    for counter in _OPEN.get():
        counter.forward += forward
        counter.backward += backward


@contextlib.contextmanager
def undone_on(*errors: type[BaseException]) -> Iterator[None]:
    """Passes recorded inside the block are taken back from every open counter when it raises one of ``errors``
    (work that is redone, e.g. a training step whose compilation failed: counts depend on the settings, never on
    whether this machine could compile)."""
    marks = [(c, c.forward, c.backward) for c in _OPEN.get()]
    try:
        yield
    except errors:
        for c, forward, backward in marks:
            c.forward, c.backward = forward, backward
        raise

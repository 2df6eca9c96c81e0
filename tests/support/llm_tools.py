"""Tools for the ``openai`` agents of the tests: plain typed functions, sync and async."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from pydantic import BaseModel, Field


class Point(BaseModel):
    x: float
    y: float


def add(a: int, b: int) -> int:
    """Add two integers.

    The rest of a docstring is not the description.
    """
    return a + b


def multiply(a: float, b: float = 2.0) -> float:
    """Multiply two numbers."""
    return a * b


async def distance(p: Point, q: Point, unit: Literal["m", "km"] = "m") -> dict[str, object]:
    """Distance between two points, computed on the event loop."""
    await asyncio.sleep(0)
    meters = ((p.x - q.x) ** 2 + (p.y - q.y) ** 2) ** 0.5
    return {"distance": meters / 1000 if unit == "km" else meters, "unit": unit}


def lookup(key: Annotated[str, Field(description="the key to look up")]) -> str:
    """Look a key up in a table that has only one key."""
    if key != "known":
        raise KeyError(f"no entry for {key!r}")
    return "found"


def takes_anything(*args: object) -> None:
    """Has no schema: a tool must name its parameters."""

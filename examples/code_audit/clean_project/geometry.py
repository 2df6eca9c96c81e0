"""Geometry helpers, with nothing for the code audit to find."""

import math


def circle_area(radius: float) -> float:
    if radius < 0:
        raise ValueError("radius must not be negative")
    return math.pi * radius**2

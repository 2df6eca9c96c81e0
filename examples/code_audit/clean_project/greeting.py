"""Greetings, with nothing for the code audit to find."""


def greet(name: str) -> str:
    return f"Hello, {name}!"

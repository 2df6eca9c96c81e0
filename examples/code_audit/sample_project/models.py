"""Plain data types of the sample service."""

from dataclasses import dataclass


@dataclass(frozen=True)
class User:
    name: str
    email: str
    password_hash: str = ""
    max_tokens: int = 256


def display_name(user: User) -> str:
    return f"{user.name} <{user.email}>"

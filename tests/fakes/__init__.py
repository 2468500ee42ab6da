"""Test doubles: stand-ins for parts whose real version cannot be made to misbehave on demand."""

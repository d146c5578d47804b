"""Emulated low-precision arithmetic (see DESIGN.md)."""

__all__: list[str] = []

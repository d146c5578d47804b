"""Value statistics against a format (see DESIGN.md)."""

__all__: list[str] = []

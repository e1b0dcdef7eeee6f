"""Argument checks of the library functions (samplers, transforms, metrics, re-ranking)."""
import numbers


def is_positive_int(value):
    """An integer (Python or numpy, not a bool) of at least 1."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def positive_int(name, value, hint=""):
    """int(value), or ValueError "<name> must be a positive integer<hint>, got <value>"."""
    if not is_positive_int(value):
        raise ValueError(f"{name} must be a positive integer{hint}, got {value!r}")
    return int(value)

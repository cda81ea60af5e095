"""Option parsing and formatting shared by several commands."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click


def fmt_params(n: int | None) -> str:
    """Parameter count as ``2.54M`` or ``812.3k``."""
    if n is None:
        return "?"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def range_option(value: str | None, name: str, allow_none: bool = False) -> list[float] | None:
    """'LO,HI' -> [LO, HI]; 'none' -> None where allowed."""
    if value is None:
        return None
    if allow_none and value.strip().lower() in ("none", "off", "no"):
        return None
    parts = value.split(",")
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise click.BadParameter(f"expected LOW,HIGH (e.g. 0,5), got {value!r}", param_hint=name) from None
    if low > high:
        raise click.BadParameter(f"LOW must not exceed HIGH, got {value!r}", param_hint=name)
    return [low, high]


def float_list(value: str, expected: str, hint: str | None = None) -> list[float]:
    """Comma-separated numbers; BadParameter "expected comma-separated <expected>" if one is not."""
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated {expected}, got {value!r}", param_hint=hint) from None


def chunk_ms_list(value: str) -> list[float]:
    """``--chunk-ms 2,4,8`` -> positive milliseconds."""
    out = float_list(value, "milliseconds like 2,4,8")
    if not out or any(not (v > 0) for v in out):
        raise click.BadParameter(f"expected positive milliseconds like 2,4,8, got {value!r}")
    return out


def speeds_list(value: str) -> list[float]:
    """``--speeds 1,0.92`` -> speed factors (at least one)."""
    expected, hint = "speed factors like 1,0.92", "'--speeds'"
    out = float_list(value, expected, hint)
    if not out:
        raise click.BadParameter(f"expected comma-separated {expected}, got {value!r}", param_hint=hint)
    return out


def streaming_options(passes_help: str, quality_help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--passes``, ``--quality``, ``--equalize`` and ``--backend``, as ``sep stream`` and ``sep bench``
    share them."""
    options = [
        click.option("--passes", type=click.IntRange(min=1), default=None, metavar="N", help=passes_help),
        click.option("--quality", type=click.Choice(["fast", "high"]), default="fast", show_default=True,
                     help=quality_help),
        click.option("--equalize", type=click.FloatRange(0, 40), default=None, metavar="DB",
                     help="Causal channel normalisation: the most dB per band that the running "
                          "equalizer moves the input toward training speech, its tracks filtered back "
                          "(0: off). Default: the preset's."),
        click.option(
            "--backend", type=click.Choice(["auto", "native", "torch"]), default="auto", show_default=True,
            help="Streaming step: the compiled kernel (native: built on first use with the system C compiler, "
                 "cached in ~/.cache/sep), torch, or native when it can be built (auto). The output is the same."),
    ]

    def apply(fn: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return apply
